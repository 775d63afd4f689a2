-- The first queued change of a table, found in one index probe: each change arriving from the peer
-- asks whether this node's queue holds any of its table before it weighs them (apply.sql). Through the
-- queue's own key it would read, from the head, every entry of other tables queued before it.
CREATE INDEX IF NOT EXISTS queue_by_table ON {{queue}} (table_tag, seq);
