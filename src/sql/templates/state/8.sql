-- A node restored from a backup (or failed over to a replica that lagged) goes back to an earlier
-- state of itself, and so does this table, with it. `pgtwin run` moves each node's mark forward with
-- its heartbeat and records, on the other node, the mark it saw there: a node whose mark is below
-- what its peer saw went back. The peer then refuses its changes (they would undo the peer's newer
-- rows) until a repair. A mark is never below the clock's microseconds at its last move, so a node
-- installed anew (after a `down` that reached only it) starts above anything its peer recorded.
ALTER TABLE {{link}} ADD COLUMN IF NOT EXISTS mark bigint NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
ALTER TABLE {{link}} ADD COLUMN IF NOT EXISTS peer_mark bigint NOT NULL DEFAULT 0;
-- When `pgtwin run` found the peer went back: its changes are refused here (and set aside on it)
-- until a repair clears this.
ALTER TABLE {{link}} ADD COLUMN IF NOT EXISTS peer_went_back_at timestamptz;
