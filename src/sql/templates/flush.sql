-- Deferred trigger on the pending table, fired by a transaction's first chunk when it commits: sends the
-- transaction's changes to the peer in the order they were made, each chunk through its table's ship
-- function (which queues it when the peer is unavailable, and then the rest with it), and forgets them.
-- So the peer's row locks are held only while the transaction commits, and a cycle of waits across the
-- two servers ends at the peer's lock_timeout.
--
-- Consecutive chunks travel as one where they can: tables truncated one after the other as one
-- TRUNCATE (foreign keys between them allow no other way), consecutive inserts, deletions, or
-- updates of one table with the same columns as one chunk (one round trip for a transaction of many
-- small statements). Updates join only while their keys are known and none comes twice: a key written
-- twice must arrive with its last version, applied after the first.
DECLARE
    r record;
    pgtwin_queue boolean;
    -- The run being gathered: its table (the first one, for truncates), its first chunk as written,
    -- that chunk's op and columns (when it may be joined), and the rows of the chunks joined to it.
    pgtwin_tag text;
    pgtwin_batch text;
    pgtwin_header text;
    pgtwin_more text[] := '{}';
    pgtwin_rows integer := 0;
    pgtwin_keys text[];
    pgtwin_bytes bigint := 0;
    pgtwin_truncated text[] := '{}';
    pgtwin_mark integer;
    pgtwin_next_header text;
BEGIN
    -- Queued instead, to be replayed by `pgtwin run`:
    -- * while older changes wait in the queue: a change must never overtake an earlier one of the
    --   same key;
    -- * in a SERIALIZABLE transaction: PostgreSQL may still cancel it after this point, and after
    --   postgres_fdw has committed on the peer; the queue commits, or vanishes, with it.
    -- The lock every insert into the queue takes, taken before looking: while `pgtwin run` replays the
    -- queue's last entries with it closed (crate::state::close_queue_sql), this waits, then finds the
    -- queue empty and ships directly, so that a queue drained under load empties for good.
    LOCK TABLE {{queue}} IN ROW EXCLUSIVE MODE;
    pgtwin_queue := current_setting('transaction_isolation') = 'serializable' OR {{queue_holds_any}};
    -- The transaction's chunks in order, then an empty row that ends the last run.
    FOR r IN SELECT table_tag, batch, rows, keys FROM (
                 SELECT seq, table_tag, batch, rows, keys FROM {{pending}} WHERE xid = pg_current_xact_id()
                 UNION ALL SELECT NULL, NULL, NULL, NULL, NULL) chunks
             ORDER BY seq NULLS LAST
    LOOP
        IF r.batch = 'T' AND cardinality(pgtwin_truncated) > 0 THEN
            pgtwin_truncated := pgtwin_truncated || r.table_tag;
            CONTINUE;
        END IF;
        pgtwin_next_header := NULL;
        IF left(r.batch, 1) IN ('I', 'D') OR (left(r.batch, 1) = 'U' AND r.keys IS NOT NULL) THEN
            pgtwin_mark := strpos(r.batch, {{rows_mark}});
            IF pgtwin_mark > 0 THEN
                pgtwin_next_header := left(r.batch, pgtwin_mark + {{rows_mark_length}} - 1);
            END IF;
        END IF;
        IF pgtwin_next_header = pgtwin_header AND r.table_tag = pgtwin_tag
           AND pgtwin_rows + r.rows <= {{joined_rows}} AND pgtwin_bytes + length(r.batch) <= {{chunk_bytes}}
           AND (left(r.batch, 1) <> 'U' OR (pgtwin_keys IS NOT NULL AND NOT (pgtwin_keys && r.keys))) THEN
            pgtwin_more := pgtwin_more || substr(r.batch, pgtwin_mark + {{rows_mark_length}},
                                                 length(r.batch) - pgtwin_mark - {{rows_mark_length}} - 1);
            pgtwin_rows := pgtwin_rows + r.rows;
            -- A chunk without keys makes the joined one a chunk without keys.
            pgtwin_keys := CASE WHEN r.keys IS NOT NULL AND pgtwin_keys IS NOT NULL THEN pgtwin_keys || r.keys END;
            pgtwin_bytes := pgtwin_bytes + length(r.batch);
            CONTINUE;
        END IF;
        -- This chunk cannot join the run: the run goes (a truncate run and a run of chunks never
        -- coexist), and this one starts the next.
        IF cardinality(pgtwin_truncated) > 0 THEN
            pgtwin_tag := pgtwin_truncated[1];
            pgtwin_batch := 'T' || to_json(pgtwin_truncated)::text;
            pgtwin_rows := 1;
            pgtwin_keys := NULL;
            pgtwin_truncated := '{}';
        ELSIF cardinality(pgtwin_more) > 0 THEN
            pgtwin_batch := left(pgtwin_batch, length(pgtwin_batch) - 2) || ',' || array_to_string(pgtwin_more, ',') || ']}';
        END IF;
        IF pgtwin_batch IS NOT NULL THEN
            {{dispatch}}
            -- A truncate run goes only to a peer that takes it now: queued, it would wipe the peer's
            -- own changes made meanwhile. Should the queue have filled, or the peer gone, since the
            -- TRUNCATE probed it, the transaction fails with a retryable error; run again, its
            -- TRUNCATE is queued key by key.
            IF pgtwin_queue AND left(pgtwin_batch, 2) = 'T[' THEN
                RAISE EXCEPTION 'pgtwin: the peer became unavailable while a TRUNCATE was committing'
                    USING ERRCODE = 'serialization_failure', HINT = 'run the transaction again: the TRUNCATE is then queued';
            END IF;
            pgtwin_batch := NULL;
            pgtwin_header := NULL;
            pgtwin_more := '{}';
        END IF;
        EXIT WHEN r.batch IS NULL;
        IF r.batch = 'T' THEN
            pgtwin_truncated := ARRAY[r.table_tag];
        ELSE
            pgtwin_tag := r.table_tag;
            pgtwin_batch := r.batch;
            pgtwin_header := pgtwin_next_header;
            pgtwin_rows := r.rows;
            pgtwin_keys := r.keys;
            pgtwin_bytes := length(r.batch);
        END IF;
    END LOOP;
    DELETE FROM {{pending}} WHERE xid = pg_current_xact_id();
    RETURN NULL;
END
