-- Last writer wins, per key, between a chunk arriving from the peer (changed at pgtwin_at) and the
-- newest change of the same key still waiting in the local queue (changed at its transaction's
-- start). Records each conflict; drops the local changes that lost from the queue (so they never
-- reach the peer); returns the arriving rows that won (NULL when none did). Keys compare by their
-- JSON text: both nodes write it with the same functions and settings (docs/change-format.md).
DECLARE
    pgtwin_keys text[];
    -- The queued entries that hold the arriving keys' newest changes, as queue_latest records them.
    pgtwin_latest bigint[];
    -- Arriving keys without a record naming a queued entry that holds them, and the entries holding
    -- them, found through the index on the queue's keys (usually none: the key is not queued).
    pgtwin_unrecorded text[];
    pgtwin_found bigint[];
    -- Queued bulk chunks (which record no keys) holding an arriving key, found by reading them.
    pgtwin_unkeyed bigint[];
    pgtwin_wanted bigint[];
    pgtwin_held bigint;
    pgtwin_local_won text[];
    pgtwin_remote_won text[];
    pgtwin_inserted text[];
    pgtwin_touched bigint[];
    pgtwin_emptied bigint[];
BEGIN
    SELECT array_agg({{incoming_key}}) INTO pgtwin_keys FROM json_array_elements(pgtwin_rows) b;
    -- The entries that weigh are locked FOR SHARE: a replay of one in progress (`pgtwin run` holds
    -- them FOR UPDATE) is waited for; once it commits the entry is gone, and an entry already applied
    -- on the peer must not win here, so the records are read again if one moved.
    LOOP
        SELECT coalesce(array_agg(k) FILTER (WHERE q.seq IS NULL), '{}'),
               coalesce(array_agg(q.seq) FILTER (WHERE q.seq IS NOT NULL), '{}')
        INTO pgtwin_unrecorded, pgtwin_latest
        FROM unnest(pgtwin_keys) k
        LEFT JOIN {{queue_latest}} l ON l.table_tag = {{tag}} AND l.key = k
        LEFT JOIN {{queue}} q ON q.seq = l.seq AND l.key = ANY (q.keys);
        SELECT coalesce(array_agg(q.seq), '{}') INTO pgtwin_found
        FROM {{queue}} q WHERE q.keys && pgtwin_unrecorded AND q.table_tag = {{tag}};
        pgtwin_wanted := ARRAY(SELECT DISTINCT unnest(pgtwin_latest || pgtwin_found));
        EXIT WHEN cardinality(pgtwin_wanted) = 0;
        PERFORM FROM {{queue}} WHERE seq = ANY (pgtwin_wanted) ORDER BY seq FOR SHARE;
        GET DIAGNOSTICS pgtwin_held = ROW_COUNT;
        -- All still there: nothing moved while this waited.
        EXIT WHEN pgtwin_held = cardinality(pgtwin_wanted);
    END LOOP;
    SELECT coalesce(array_agg(DISTINCT seq), '{}') INTO pgtwin_unkeyed FROM (
        SELECT q.seq FROM {{queue}} q, json_array_elements((substr(q.batch, 2)::json)->'rows') p
        WHERE q.keys IS NULL AND q.table_tag = {{tag}} AND left(q.batch, 1) IN ('I', 'U', 'D')
          AND {{local_key}} = ANY (pgtwin_keys)
        FOR SHARE OF q
    ) unkeyed;
    IF cardinality(pgtwin_latest) = 0 AND cardinality(pgtwin_found) = 0 AND cardinality(pgtwin_unkeyed) = 0 THEN
        RETURN pgtwin_rows;
    END IF;
    -- A chunk `pgtwin run` joined from several queue entries has lost their separate times.
    IF current_setting({{joined_setting}}, true) = 'on' THEN
        RAISE EXCEPTION 'pgtwin: a joined chunk meets changes queued here'
            USING ERRCODE = {{retry_unjoined}};
    END IF;
    WITH incoming AS (
        SELECT {{incoming_key}} AS k, b AS c FROM json_array_elements(pgtwin_rows) b
    ), queued AS (
        -- A recorded key's newest change: one entry, read for that key's row.
        SELECT l.key AS k, q.changed_at AS at, q.seq,
               (SELECT json_build_object('op', left(q.batch, 1), 'row', p)::text
                FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                WHERE {{local_key}} = l.key LIMIT 1) AS version
        FROM {{queue_latest}} l JOIN {{queue}} q ON q.seq = l.seq
        WHERE l.table_tag = {{tag}} AND l.key = ANY (pgtwin_keys) AND q.seq = ANY (pgtwin_latest)
          AND l.key = ANY (q.keys)
        UNION ALL
        -- The other keys' queued changes, each entry read.
        SELECT {{local_key}}, q.changed_at, q.seq, json_build_object('op', left(q.batch, 1), 'row', p)::text
        FROM {{queue}} q, json_array_elements((substr(q.batch, 2)::json)->'rows') p
        WHERE q.seq = ANY (pgtwin_found || pgtwin_unkeyed)
    ), pending AS (
        SELECT k, (array_agg(at ORDER BY seq DESC))[1] AS at, (array_agg(version ORDER BY seq DESC))[1] AS latest
        FROM queued GROUP BY k
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
        -- them must overwrite there, not be taken for a key handed out twice. A recorded key's inserts
        -- are looked for while its record says one may wait (then it says none does).
        SELECT coalesce(array_agg(key), '{}') || ARRAY(SELECT unnest(pgtwin_local_won) INTERSECT SELECT unnest(pgtwin_unrecorded))
        INTO pgtwin_inserted FROM {{queue_latest}}
        WHERE table_tag = {{tag}} AND key = ANY (pgtwin_local_won) AND inserts AND seq = ANY (pgtwin_latest);
        IF cardinality(pgtwin_inserted) > 0 THEN
            UPDATE {{queue}} q SET batch = 'U' || substr(q.batch, 2)
            WHERE q.keys && pgtwin_inserted AND q.table_tag = {{tag}} AND left(q.batch, 1) = 'I';
            -- Not a record a local writer has moved on meanwhile: its own insert may wait.
            UPDATE {{queue_latest}} SET inserts = false
            WHERE table_tag = {{tag}} AND key = ANY (pgtwin_inserted) AND seq = ANY (pgtwin_latest);
        END IF;
        UPDATE {{queue}} q SET batch = 'U' || substr(q.batch, 2)
        WHERE q.seq = ANY (pgtwin_unkeyed) AND left(q.batch, 1) = 'I'
          AND EXISTS (SELECT FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                      WHERE {{local_key}} = ANY (pgtwin_local_won));
        -- Nor does the peer hold the versions this node's queued updates of those keys replaced: they
        -- are written there whatever it holds (their old versions go, see apply.sql).
        SELECT coalesce(array_agg(seq), '{}') INTO pgtwin_touched
        FROM {{queue}} q
        WHERE (q.keys && pgtwin_local_won OR q.seq = ANY (pgtwin_unkeyed)) AND q.table_tag = {{tag}}
          AND left(q.batch, 1) = 'U' AND strpos(q.batch, {{before_mark}}) > 0;
        IF cardinality(pgtwin_touched) > 0 THEN
            PERFORM FROM {{queue}} WHERE seq = ANY (pgtwin_touched) ORDER BY seq FOR UPDATE;
            UPDATE {{queue}} q SET batch = 'U{"columns":' || ((substr(q.batch, 2)::json)->'columns')::text || ',"rows":'
                    || (SELECT json_agg(CASE WHEN {{local_key}} = ANY (pgtwin_local_won)
                                             THEN (SELECT json_object_agg(x.k, x.v) FROM json_each(p) x(k, v) WHERE x.k <> {{before}})
                                             ELSE p END)
                        FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p)::text || '}'
            WHERE q.seq = ANY (pgtwin_touched);
        END IF;
    END IF;
    IF cardinality(pgtwin_remote_won) > 0 THEN
        -- Every queued change of those keys goes, found through the index on the keys (once: they are
        -- gone after). The entries are locked first, in order, so that the rewrite below reads them as
        -- they are: two arrivals stripping different keys from one entry take turns. Rewritten in the
        -- canonical chunk form, so `pgtwin run` may still join it with its neighbours; an entry left
        -- with no row is deleted.
        SELECT pgtwin_unkeyed || coalesce(array_agg(seq), '{}') INTO pgtwin_touched
        FROM {{queue}} q WHERE q.keys && pgtwin_remote_won AND q.table_tag = {{tag}};
        PERFORM FROM {{queue}} WHERE seq = ANY (pgtwin_touched) ORDER BY seq FOR UPDATE;
        WITH stripped AS (
            UPDATE {{queue}} q SET batch = left(q.batch, 1) || '{"columns":' || ((substr(q.batch, 2)::json)->'columns')::text
                    || ',"rows":' || coalesce(kept.rows::text, '[]') || '}',
                rows = coalesce(kept.n, 0),
                keys = CASE WHEN q.keys IS NOT NULL THEN ARRAY(SELECT k FROM unnest(q.keys) k WHERE NOT k = ANY (pgtwin_remote_won)) END
            FROM {{queue}} q2 CROSS JOIN LATERAL (
                SELECT json_agg(p) AS rows, count(*)::int AS n
                FROM json_array_elements((substr(q2.batch, 2)::json)->'rows') p
                WHERE NOT {{local_key}} = ANY (pgtwin_remote_won)) kept
            WHERE q2.seq = q.seq AND q.seq = ANY (pgtwin_touched)
                AND EXISTS (SELECT FROM json_array_elements((substr(q.batch, 2)::json)->'rows') p
                            WHERE {{local_key}} = ANY (pgtwin_remote_won))
            RETURNING q.seq, q.rows
        )
        SELECT coalesce(array_agg(seq) FILTER (WHERE rows = 0), '{}') INTO pgtwin_emptied FROM stripped;
        -- Their records name entries that no longer hold them (a record a local writer has moved on
        -- meanwhile names its own newer change, and stays).
        DELETE FROM {{queue_latest}}
        WHERE table_tag = {{tag}} AND key = ANY (pgtwin_remote_won) AND seq = ANY (pgtwin_touched);
        DELETE FROM {{queue}} WHERE seq = ANY (pgtwin_emptied);
    END IF;
    -- The arriving rows that won over a queued change of theirs overwrite this node's version of
    -- the key, not the one they replaced on the peer: without their old versions (see apply.sql).
    RETURN (SELECT json_agg(CASE WHEN {{incoming_key}} = ANY (pgtwin_remote_won)
                                 THEN (SELECT json_object_agg(x.k, x.v) FROM json_each(b) x(k, v) WHERE x.k <> {{before}})
                                 ELSE b END)
            FROM json_array_elements(pgtwin_rows) b WHERE NOT {{incoming_key}} = ANY (pgtwin_local_won));
END
