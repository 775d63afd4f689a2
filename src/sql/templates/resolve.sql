-- Last writer wins, per key, between a chunk arriving from the peer (changed at pgtwin_at) and the
-- changes of the same keys still waiting in the local queue. Records each conflict; drops the local
-- changes that lost from the queue (so they never reach the peer); returns the arriving changes that won.
DECLARE
    pgtwin_local_won text[];
    pgtwin_remote_won text[];
BEGIN
    -- Wait for a replay of these entries in progress (`pgtwin run` holds them FOR UPDATE): once it
    -- commits they are gone, and an entry already applied on the peer must not win here.
    PERFORM FROM {{queue}} WHERE table_tag = {{tag}} FOR SHARE;
    WITH incoming AS (
        SELECT ROW({{b_keys}})::text AS k, b AS c FROM unnest(pgtwin_rows) b
    ), pending AS (
        SELECT ROW({{p_keys}})::text AS k, max(q.changed_at) AS at, (array_agg(p ORDER BY q.seq DESC))[1] AS latest
        FROM {{queue}} q, unnest(q.batch::{{change_type}}[]) p
        WHERE q.table_tag = {{tag}} AND q.batch <> 'T'
        GROUP BY 1
    ), decided AS (
        SELECT i.k, i.c, p.latest, (p.at > pgtwin_at OR (p.at = pgtwin_at AND {{local_wins_ties}})) AS local_wins
        FROM incoming i JOIN pending p USING (k)
    ), logged AS (
        INSERT INTO {{conflicts}} (table_name, key, local_change, remote_change, winner)
        SELECT {{table_name}}, k, latest::text, c::text, CASE WHEN local_wins THEN {{local}} ELSE {{peer}} END
        FROM decided
    )
    SELECT coalesce(array_agg(k) FILTER (WHERE local_wins), '{}'), coalesce(array_agg(k) FILTER (WHERE NOT local_wins), '{}')
    INTO pgtwin_local_won, pgtwin_remote_won
    FROM decided;
    IF cardinality(pgtwin_remote_won) > 0 THEN
        UPDATE {{queue}} q SET
            batch = coalesce((SELECT array_agg(p)::text FROM unnest(q.batch::{{change_type}}[]) p
                              WHERE NOT ROW({{p_keys}})::text = ANY (pgtwin_remote_won)), '{}'),
            rows = (SELECT count(*) FROM unnest(q.batch::{{change_type}}[]) p WHERE NOT ROW({{p_keys}})::text = ANY (pgtwin_remote_won))
        WHERE q.table_tag = {{tag}} AND q.batch <> 'T'
            AND EXISTS (SELECT FROM unnest(q.batch::{{change_type}}[]) p WHERE ROW({{p_keys}})::text = ANY (pgtwin_remote_won));
        DELETE FROM {{queue}} WHERE table_tag = {{tag}} AND batch <> 'T' AND rows = 0;
    END IF;
    RETURN (SELECT array_agg(b) FROM unnest(pgtwin_rows) b WHERE NOT ROW({{b_keys}})::text = ANY (pgtwin_local_won));
END
