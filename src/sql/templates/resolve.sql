-- Last writer wins, per key, between a chunk arriving from the peer (changed at pgtwin_at) and the
-- changes of the same keys still waiting in the local queue. Records each conflict; drops the local
-- changes that lost from the queue (so they never reach the peer); returns the arriving rows that won
-- (NULL when none did). Keys compare by their JSON text: both nodes write it with the same functions
-- and settings (docs/change-format.md).
DECLARE
    pgtwin_local_won text[];
    pgtwin_remote_won text[];
BEGIN
    -- Wait for a replay of these entries in progress (`pgtwin run` holds them FOR UPDATE): once it
    -- commits they are gone, and an entry already applied on the peer must not win here.
    PERFORM FROM {{queue}} WHERE table_tag = {{tag}} FOR SHARE;
    WITH incoming AS (
        SELECT {{incoming_key}} AS k, b AS c FROM json_array_elements(pgtwin_rows) b
    ), pending AS (
        SELECT {{local_key}} AS k, max(q.changed_at) AS at,
               (array_agg(json_build_object('op', left(q.batch, 1), 'row', p)::text ORDER BY q.seq DESC))[1] AS latest
        FROM {{queue}} q, json_array_elements((substr(q.batch, 2)::json)->'rows') p
        WHERE q.table_tag = {{tag}} AND q.batch <> 'T'
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
        WHERE q.table_tag = {{tag}} AND left(q.batch, 1) = 'I'
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
        WHERE q2.seq = q.seq AND q.table_tag = {{tag}} AND q.batch <> 'T'
            AND EXISTS (SELECT FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                        WHERE {{local_key}} = ANY (pgtwin_remote_won));
        DELETE FROM {{queue}} WHERE table_tag = {{tag}} AND batch <> 'T' AND rows = 0;
    END IF;
    RETURN (SELECT json_agg(b) FROM json_array_elements(pgtwin_rows) b WHERE NOT {{incoming_key}} = ANY (pgtwin_local_won));
END
