-- Statement trigger after a deletion from the queue (replayed, set aside, lost a conflict, emptied):
-- the keys whose newest queued change left get the newest of those still queued, if any. Keeps
-- queue_latest exact for whoever deletes, now or in a later version.
DECLARE
    r record;
    -- Only an entry older than the one that left can still hold its key: replay deletes the oldest
    -- entries, so usually none is, and no key is looked up again.
    pgtwin_oldest bigint := (SELECT min(seq) FROM {{queue}});
BEGIN
    -- Per table, the keys and entries that left, as arrays: probed through the index whatever the
    -- planner guesses of a transition table. A record names an entry holding its key, so a key and an
    -- entry that both left, paired or not, mean that key's record went with them.
    FOR r IN SELECT o.table_tag, array_agg(k) AS keys, array_agg(DISTINCT o.seq) AS seqs
             FROM pgtwin_gone o, unnest(o.keys) k GROUP BY o.table_tag
    LOOP
        WITH gone AS (
            DELETE FROM {{queue_latest}} l
            WHERE l.table_tag = r.table_tag AND l.key = ANY (r.keys) AND l.seq = ANY (r.seqs)
            RETURNING l.key, l.seq
        )
        INSERT INTO {{queue_latest}} (table_tag, key, seq, changed_at, inserts)
        SELECT r.table_tag, g.key, left_behind.seq, left_behind.changed_at, left_behind.inserts
        FROM gone g CROSS JOIN LATERAL (
            -- "+ 0": max(seq) alone is planned as a backward walk of the whole queue's primary key.
            SELECT max(q.seq + 0) AS seq, max(q.changed_at) AS changed_at, bool_or(left(q.batch, 1) = 'I') AS inserts
            FROM {{queue}} q WHERE q.keys @> ARRAY[g.key] AND q.table_tag = r.table_tag
        ) left_behind
        WHERE g.seq > pgtwin_oldest AND left_behind.seq IS NOT NULL;
    END LOOP;
    RETURN NULL;
END
