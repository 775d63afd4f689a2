-- Statement trigger after a deletion from the queue (replayed, set aside, lost a conflict, emptied):
-- clears the records of keys whose newest queued change left, and every record once a deletion of
-- entries leaves the queue empty (one that deleted nothing does nothing). Without waiting: a record a
-- writer's transaction holds (it is queueing a newer change of the key) is left to that writer. A
-- record left naming an entry gone only costs the conflict resolution an index lookup (resolve.sql),
-- so none is ever wrong, only stale.
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pgtwin_gone) THEN
        RETURN NULL;
    END IF;
    IF NOT {{queue_holds_any}} THEN
        DELETE FROM {{queue_latest}} WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM {{queue_latest}} FOR UPDATE SKIP LOCKED));
        RETURN NULL;
    END IF;
    -- Per table, the keys and entries that left, as arrays: probed through the primary key whatever
    -- the planner guesses of a transition table. A record names an entry holding its key, so a key and
    -- an entry that both left, paired or not, mean that record is stale.
    FOR r IN SELECT o.table_tag, array_agg(k) AS keys, array_agg(DISTINCT o.seq) AS seqs
             FROM pgtwin_gone o, unnest(o.keys) k GROUP BY o.table_tag
    LOOP
        DELETE FROM {{queue_latest}} WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM {{queue_latest}}
            WHERE table_tag = r.table_tag AND key = ANY (r.keys) AND seq = ANY (r.seqs)
            FOR UPDATE SKIP LOCKED));
    END LOOP;
    RETURN NULL;
END
