-- Appends one chunk to the queue for the peer, unless the queue has outgrown its limit: then the link
-- is marked as needing repair instead of growing without bound.
DECLARE
    oldest timestamptz;
    queued bigint;
BEGIN
    IF (SELECT needs_repair_since FROM {{link}}) IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT changed_at INTO oldest FROM {{queue}} ORDER BY seq LIMIT 1;
    IF oldest < transaction_timestamp() - make_interval(secs => {{max_age_s}}) THEN
        UPDATE {{link}} SET needs_repair_since = now(),
            reason = format('the queue for the peer held changes older than %s seconds', {{max_age_s}});
        RETURN;
    END IF;
    INSERT INTO {{queue}} (table_tag, rows, batch, keys) VALUES (pgtwin_tag, pgtwin_rows, pgtwin_batch, pgtwin_keys)
        RETURNING seq INTO queued;
    -- This entry is now the newest queued change of each of its keys (state migration 6), recorded in
    -- key order, as every writer does, so that two writers never wait on each other in a circle here.
    IF pgtwin_keys IS NOT NULL THEN
        INSERT INTO {{queue_latest}} AS l (table_tag, key, seq, inserts)
        SELECT DISTINCT pgtwin_tag, k, queued, left(pgtwin_batch, 1) = 'I'
        FROM unnest(pgtwin_keys) k ORDER BY 2
        ON CONFLICT (table_tag, key) DO UPDATE
            SET seq = greatest(l.seq, EXCLUDED.seq), inserts = l.inserts OR EXCLUDED.inserts;
    END IF;
    -- Wake `pgtwin run` when the queue was empty. Not on every entry: NOTIFY serializes the commits of
    -- all notifying transactions (a database-wide lock held through the commit's WAL flush), and while
    -- entries wait the runner is draining anyway (it re-checks shortly after each drain).
    IF oldest IS NULL THEN
        PERFORM pg_notify({{channel}}, '');
    END IF;
END
