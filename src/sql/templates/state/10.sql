-- The first queued change of a table, found in one index probe: each change arriving from the peer
-- asks whether this node's queue holds any of its table before it weighs them (apply.sql). The queue's
-- own key would walk from the head, through every entry of other tables and every one deleted since
-- the last vacuum.
CREATE INDEX IF NOT EXISTS queue_by_table ON {{queue}} (table_tag, seq);
