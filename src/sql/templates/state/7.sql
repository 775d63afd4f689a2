-- A record of a replayed entry names it by its time as well as its number: a node restored from a
-- backup numbers its new entries again from where the backup left off, and the records of the
-- entries it had numbered so before must not be taken for theirs (the runner would delete them from
-- its queue unapplied). Records from before this column match by number alone ('-infinity').
ALTER TABLE {{replayed}} ADD COLUMN IF NOT EXISTS changed_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE {{replayed}} ALTER COLUMN changed_at DROP DEFAULT;
ALTER TABLE {{replayed}} DROP CONSTRAINT IF EXISTS replayed_pkey;
ALTER TABLE {{replayed}} ADD PRIMARY KEY (origin, seq, changed_at);
