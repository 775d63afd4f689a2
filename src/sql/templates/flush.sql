-- Deferred trigger on the pending table, fired by a transaction's first chunk when it commits: sends the
-- transaction's changes to the peer in the order they were made, each chunk through its table's ship
-- function (which queues it when the peer is unavailable, and then the rest with it), and forgets them.
-- So the peer's row locks are held only while the transaction commits, and a cycle of waits across the
-- two servers ends at the peer's lock_timeout.
DECLARE
    r record;
    pgtwin_queue boolean;
    pgtwin_tag text;
    pgtwin_batch text;
    pgtwin_rows integer;
    -- Tables truncated one after the other: they go as one TRUNCATE.
    pgtwin_truncated text[] := '{}';
BEGIN
    PERFORM set_config({{flush_setting}}, '', true);
    -- Queued instead, to be replayed by `pgtwin run`:
    -- * while older changes wait in the queue: a change must never overtake an earlier one of the
    --   same key;
    -- * in a SERIALIZABLE transaction: PostgreSQL may still cancel it after this point, and after
    --   postgres_fdw has committed on the peer; the queue commits, or vanishes, with it.
    pgtwin_queue := current_setting('transaction_isolation') = 'serializable' OR EXISTS (SELECT FROM {{queue}});
    FOR r IN SELECT table_tag, batch, rows FROM {{pending}} WHERE xid = pg_current_xact_id() ORDER BY seq
    LOOP
        IF r.batch = 'T' THEN
            pgtwin_truncated := pgtwin_truncated || r.table_tag;
            CONTINUE;
        END IF;
        IF cardinality(pgtwin_truncated) > 0 THEN
            pgtwin_tag := pgtwin_truncated[1];
            pgtwin_batch := 'T' || to_json(pgtwin_truncated)::text;
            pgtwin_rows := 1;
            pgtwin_truncated := '{}';
            {{dispatch}}
        END IF;
        pgtwin_tag := r.table_tag;
        pgtwin_batch := r.batch;
        pgtwin_rows := r.rows;
        {{dispatch}}
    END LOOP;
    IF cardinality(pgtwin_truncated) > 0 THEN
        pgtwin_tag := pgtwin_truncated[1];
        pgtwin_batch := 'T' || to_json(pgtwin_truncated)::text;
        pgtwin_rows := 1;
        {{dispatch}}
    END IF;
    DELETE FROM {{pending}} WHERE xid = pg_current_xact_id();
    RETURN NULL;
END
