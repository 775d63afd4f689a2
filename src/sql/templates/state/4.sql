-- A synced transaction's changes wait here until it commits, then travel to the peer together (sync
-- mode, flush.sql): the peer's row locks are held only while the transaction
-- commits. Rows live only within their own transaction (sent and deleted at its commit), so the table
-- is unlogged: a crash ends the transaction and its changes with it.
CREATE UNLOGGED TABLE IF NOT EXISTS {{pending}} (
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq bigint GENERATED ALWAYS AS IDENTITY,
    table_tag text NOT NULL,
    rows integer NOT NULL,
    batch text NOT NULL,
    keys text[],
    -- The transaction's first chunk: its row fires the deferred trigger that sends them all.
    flush boolean NOT NULL,
    PRIMARY KEY (xid, seq)
);
-- The writer's transaction of each queue entry: a replay never splits one (its deferred constraints
-- are checked at the end of the peer's transaction). Entries queued before this version have none.
ALTER TABLE {{queue}} ADD COLUMN IF NOT EXISTS xid xid8;
ALTER TABLE {{queue}} ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS queue_xid ON {{queue}} (xid, seq);
ALTER TABLE {{set_aside}} ADD COLUMN IF NOT EXISTS xid xid8;
-- The keys of each small queued chunk (crate::change::KEYED_ROWS, key_text_of): a change arriving from
-- the peer finds the queued changes of its keys through the index, whatever the length of the queue.
-- Without fastupdate: its pending list would be read whole by every lookup.
ALTER TABLE {{queue}} ADD COLUMN IF NOT EXISTS keys text[];
CREATE INDEX IF NOT EXISTS queue_keys ON {{queue}} USING gin (keys) WITH (fastupdate = off);
-- The chunks that record no keys (bulk statements), which the conflict resolution reads instead.
CREATE INDEX IF NOT EXISTS queue_unkeyed ON {{queue}} (table_tag) WHERE keys IS NULL;
