-- Last writer wins, per key, between a chunk arriving from the peer (changed at pgtwin_at) and the
-- changes of the same keys still waiting in the local queue. Records each conflict; drops the local
-- changes that lost from the queue (so they never reach the peer); returns the arriving rows that won
-- (NULL when none did). Keys compare by their JSON text: both nodes write it with the same functions
-- and settings (docs/change-format.md).
DECLARE
    pgtwin_local_won text[];
    pgtwin_remote_won text[];
    pgtwin_candidates bigint[];
BEGIN
    -- Only the queued chunks that hold an arriving key are weighed, and locked FOR SHARE: a replay of
    -- one of them in progress (`pgtwin run` holds them FOR UPDATE) is waited for; once it commits
    -- they are gone, and an entry already applied on the peer must not win here. A small chunk is
    -- found through the index on the keys it records (so the cost does not grow with the queue); a
    -- bulk one, which records none, by reading it.
    WITH incoming AS (
        SELECT array_agg({{incoming_key}}) AS keys FROM json_array_elements(pgtwin_rows) b
    )
    SELECT coalesce(array_agg(DISTINCT seq), '{}') INTO pgtwin_candidates FROM (
        SELECT q.seq FROM {{queue}} q, incoming i
        WHERE q.keys && i.keys AND q.table_tag = {{tag}}
        FOR SHARE OF q
    ) keyed;
    SELECT pgtwin_candidates || coalesce(array_agg(DISTINCT seq), '{}') INTO pgtwin_candidates FROM (
        SELECT q.seq FROM {{queue}} q, json_array_elements((substr(q.batch, 2)::json)->'rows') p
        WHERE q.keys IS NULL AND q.table_tag = {{tag}} AND left(q.batch, 1) IN ('I', 'U', 'D')
          AND {{local_key}} IN (SELECT {{incoming_key}} FROM json_array_elements(pgtwin_rows) b)
        FOR SHARE OF q
    ) unkeyed;
    IF cardinality(pgtwin_candidates) = 0 THEN
        RETURN pgtwin_rows;
    END IF;
    -- A chunk `pgtwin run` joined from several queue entries has lost their separate times.
    IF current_setting({{joined_setting}}, true) = 'on' THEN
        RAISE EXCEPTION 'pgtwin: a joined chunk meets changes queued here'
            USING ERRCODE = {{retry_unjoined}};
    END IF;
    WITH incoming AS (
        SELECT {{incoming_key}} AS k, b AS c FROM json_array_elements(pgtwin_rows) b
    ), candidates AS (
        SELECT q.seq, q.batch, q.changed_at FROM {{queue}} q WHERE q.seq = ANY (pgtwin_candidates)
    ), pending AS (
        SELECT {{local_key}} AS k, max(q.changed_at) AS at,
               (array_agg(json_build_object('op', left(q.batch, 1), 'row', p)::text ORDER BY q.seq DESC))[1] AS latest
        FROM candidates q, json_array_elements((substr(q.batch, 2)::json)->'rows') p
        GROUP BY 1
    ), decided AS (
        SELECT i.k, i.c, p.latest, (p.at > pgtwin_at OR (p.at = pgtwin_at AND {{local_wins_ties}})) AS local_wins
        FROM incoming i JOIN pending p USING (k)
    ), logged AS (
        INSERT INTO {{conflicts}} (table_name, key, local_change, remote_change, winner)
        SELECT {{table_name}}, k, latest, json_build_object('op', pgtwin_op, 'row', c)::text,
               CASE WHEN local_wins THEN {{local}} ELSE {{peer}} END
        FROM decided
    )
    SELECT coalesce(array_agg(k) FILTER (WHERE local_wins), '{}'), coalesce(array_agg(k) FILTER (WHERE NOT local_wins), '{}')
    INTO pgtwin_local_won, pgtwin_remote_won
    FROM decided;
    IF cardinality(pgtwin_local_won) > 0 THEN
        -- This node's changes of those keys won; the peer holds the losing rows, so an insert among
        -- them must overwrite there, not be taken for a key handed out twice.
        UPDATE {{queue}} q SET batch = 'U' || substr(q.batch, 2)
        WHERE q.seq = ANY (pgtwin_candidates) AND left(q.batch, 1) = 'I'
            AND EXISTS (SELECT FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                        WHERE {{local_key}} = ANY (pgtwin_local_won));
    END IF;
    IF cardinality(pgtwin_remote_won) > 0 THEN
        -- Rewritten in the canonical chunk form, so `pgtwin run` may still join it with its neighbours.
        UPDATE {{queue}} q SET batch = left(q.batch, 1) || '{"columns":' || ((substr(q.batch, 2)::json)->'columns')::text
                || ',"rows":' || coalesce(kept.rows::text, '[]') || '}',
            rows = coalesce(kept.n, 0)
        FROM {{queue}} q2 CROSS JOIN LATERAL (
            SELECT json_agg(p) AS rows, count(*)::int AS n
            FROM json_array_elements((substr(q2.batch, 2)::json)->'rows') p
            WHERE NOT {{local_key}} = ANY (pgtwin_remote_won)) kept
        WHERE q2.seq = q.seq AND q.seq = ANY (pgtwin_candidates)
            AND EXISTS (SELECT FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                        WHERE {{local_key}} = ANY (pgtwin_remote_won));
        DELETE FROM {{queue}} WHERE seq = ANY (pgtwin_candidates) AND rows = 0;
    END IF;
    RETURN (SELECT json_agg(b) FROM json_array_elements(pgtwin_rows) b WHERE NOT {{incoming_key}} = ANY (pgtwin_local_won));
END
