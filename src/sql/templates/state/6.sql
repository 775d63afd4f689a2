-- The newest queued change of each key that the queue's small chunks record (their `keys`): a change
-- arriving from the peer is weighed against it in one lookup, however many changes of that key wait
-- in the queue (a hot row hammered through an outage queues thousands). The enqueue writes it; the
-- queue-forgotten trigger clears it when its entry leaves. A record is a shortcut, never the only
-- truth: one missing, or naming an entry gone, sends the conflict resolution to the index on the
-- queue's keys (resolve.sql).
CREATE TABLE IF NOT EXISTS {{queue_latest}} (
    table_tag text NOT NULL,
    key text NOT NULL,
    -- The newest queued entry holding the key.
    seq bigint NOT NULL,
    -- Whether an insert of the key may wait in the queue: once this node's change of the key wins a
    -- conflict, the peer holds a row of that key, and the insert must overwrite it there.
    inserts boolean NOT NULL,
    PRIMARY KEY (table_tag, key)
) WITH (fillfactor = 70); -- room for a hot key's updates in its own page
-- Nothing to fill in: `up` migrates only a node whose queue is empty, or stranded and emptied by
-- the same `up` (crate::install::up).
