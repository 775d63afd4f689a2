-- INSTEAD OF UPDATE trigger on a synced table's inbox view: applies one chunk of the peer's changes
-- set-wise, by key, touching no row the chunk does not name. It runs in the peer's postgres_fdw session
-- (or `pgtwin run`'s), whose pgtwin.origin setting keeps the table's own capture trigger from shipping
-- the rows back. Columns are matched by name, against the table as it is now (docs/change-format.md):
-- a column the peer has and this node lacks is ignored, one this node has alone keeps its value (its
-- default for a new row), so a migration on either node never fails the other's writes.
-- The fast path is compiled at `up` for the columns both sides had then; the table's signature
-- (crate::change::SIGNATURE_SQL) tells whether this node's table still has them, and the chunk's column
-- list whether the peer's does.
-- (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_table oid;
    pgtwin_op text;
    pgtwin_mark integer;
    pgtwin_header text;
    pgtwin_rows json;
    pgtwin_replay_at timestamptz;
    pgtwin_cols text;
    pgtwin_b_cols text;
    pgtwin_defs text;
    pgtwin_names text;
    pgtwin_set text;
    pgtwin_t_text text;
    pgtwin_b_text text;
    pgtwin_fast boolean;
    pgtwin_versioned boolean;
    pgtwin_unjoined boolean;
    pgtwin_t_compared text;
    pgtwin_o_text text;
    pgtwin_count bigint;
    pgtwin_clash text;
    pgtwin_try integer;
    pgtwin_app_path text;
    pgtwin_sql text;
BEGIN
    pgtwin_table := to_regclass({{table_text}});
    -- A table dropped, or created again without pgtwin's triggers (a schema load), would take the
    -- peer's changes but send none back: fail the peer's write rather than sync one way in silence.
    IF pgtwin_table IS NULL OR NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = pgtwin_table AND tgname = {{capture_trigger}}) THEN
        RAISE EXCEPTION 'pgtwin: table % on node % is missing or was created again without pgtwin''s triggers', {{table_text}}, {{local}}
            USING ERRCODE = {{not_captured}}, HINT = 'run pgtwin up: it merges the rows and installs the triggers again';
    END IF;
    -- A peer that went back to an earlier state of itself (a backup restored there, found by `pgtwin
    -- run`) would undo this node's newer rows: its changes wait, set aside, for a repair.
    IF (SELECT peer_went_back_at FROM {{link}}) IS NOT NULL THEN
        RAISE EXCEPTION 'pgtwin: node % went back to an earlier state of itself (restored from a backup?): node % refuses its changes until a repair', {{peer}}, {{local}}
            USING ERRCODE = {{went_back}}, HINT = format('run pgtwin repair --mirror %s (rows deleted since the backup must not come back), then pgtwin up', {{local}});
    END IF;
    -- The origin's transaction arrives whole, in the order it was made: the deferrable constraints
    -- here are checked at the end of it, as on the origin.
    SET CONSTRAINTS ALL DEFERRED;
    -- This node's own triggers fire on what is applied, under the search_path an application's session
    -- has here (postgres_fdw's sessions have pg_catalog alone, where a trigger naming a table without
    -- its schema fails): that path is set around each statement that writes the table, and only
    -- there, so that pgtwin's own code never resolves a name through it. Read once per session (a
    -- setting whose first write rolled back reads empty: read again), marked so that an empty path
    -- is told from an unread one.
    pgtwin_app_path := current_setting({{app_path_setting}}, true);
    IF coalesce(pgtwin_app_path, '') = '' THEN
        pgtwin_app_path := 'read:' || (SELECT reset_val FROM pg_settings WHERE name = 'search_path');
        PERFORM set_config({{app_path_setting}}, pgtwin_app_path, false);
    END IF;
    pgtwin_app_path := substr(pgtwin_app_path, 6);
    BEGIN
        IF NEW.pgtwin_batch = 'T' THEN
            PERFORM set_config('search_path', pgtwin_app_path, true);
            TRUNCATE {{table}};
            RETURN NEW;
        END IF;
        IF NEW.pgtwin_batch = {{probe}} THEN
            RETURN NEW;
        END IF;
        -- Several tables truncated together on the peer: together here too.
        IF left(NEW.pgtwin_batch, 2) = 'T[' THEN
            PERFORM {{truncate}}(substr(NEW.pgtwin_batch, 2)::json);
            RETURN NEW;
        END IF;
        pgtwin_op := left(NEW.pgtwin_batch, 1);
        -- The canonical form splits by text (the column list cannot hold the mark: JSON escapes quotes),
        -- so the chunk is parsed once; any other form is parsed as JSON.
        pgtwin_mark := strpos(NEW.pgtwin_batch, {{rows_mark}});
        IF left(NEW.pgtwin_batch, {{columns_prefix_length}}) = pgtwin_op || {{columns_prefix}} AND pgtwin_mark > 0 THEN
            pgtwin_header := substr(NEW.pgtwin_batch, {{columns_prefix_length}} + 1, pgtwin_mark - {{columns_prefix_length}} - 1);
            pgtwin_rows := substr(NEW.pgtwin_batch, pgtwin_mark + {{rows_mark_length}} - 1,
                                  length(NEW.pgtwin_batch) - pgtwin_mark - {{rows_mark_length}} + 1)::json;
        ELSE
            pgtwin_header := (substr(NEW.pgtwin_batch, 2)::json -> 'columns')::text;
            pgtwin_rows := substr(NEW.pgtwin_batch, 2)::json -> 'rows';
        END IF;
        pgtwin_replay_at := nullif(current_setting({{replay_setting}}, true), '')::timestamptz;
        -- An update's rows that carry the version they replaced on the peer (crate::change::BEFORE).
        pgtwin_versioned := pgtwin_op = 'U' AND strpos(NEW.pgtwin_batch, {{before_mark}}) > 0;
        -- Changes of this table may wait in the local queue: the peer's version and ours may both have
        -- changed while the nodes were apart. The chunk's rows are locked first, so that a local transaction
        -- still writing one of them has committed, and queued its change, before the queue is read. (A
        -- sync-mode writer here that changes a row of this chunk meanwhile holds its lock until its own
        -- commit reaches the peer, whose transaction holds the row there: the cycle ends at a lock
        -- timeout, failing one of the two.)
        IF pgtwin_replay_at IS NOT NULL OR {{queued_here}} THEN
            PERFORM FROM {{table}} t, json_to_recordset(pgtwin_rows) AS b({{key_defs}}) WHERE {{key_match}} FOR UPDATE OF t;
            IF {{queued_here}} THEN
                -- Keep the later change of each key (a replayed chunk carries its commit time; a joined
                -- one, which lost its entries' separate times, is refused where a key meets one here).
                pgtwin_rows := {{resolve}}(pgtwin_op, pgtwin_rows, coalesce(pgtwin_replay_at, transaction_timestamp()));
                IF pgtwin_rows IS NULL THEN
                    RETURN NEW;
                END IF;
                -- Weighed against this node's own changes of these keys: the rows that won overwrite.
                IF pgtwin_op = 'I' THEN
                    pgtwin_op := 'U';
                END IF;
            END IF;
        END IF;
        -- A chunk holds one kind of change, so only one statement runs, planned for the chunk's real size.
        IF pgtwin_op = 'D' THEN
            PERFORM set_config('search_path', pgtwin_app_path, true);
            DELETE FROM {{table}} t USING json_to_recordset(pgtwin_rows) AS b({{key_defs}}) WHERE {{key_match}};
            RETURN NEW;
        END IF;
        -- The common case: the chunk has the peer's columns as `up` saw them, and this table is as `up`
        -- saw it. Then a statement compiled at `up` (its plan cached) applies it. Rows of an insert never
        -- overwrite a row this node holds (the DO UPDATE's WHERE): see the clash check below.
        pgtwin_fast := pgtwin_header = {{expected_header}}
           AND (SELECT {{signature}} FROM pg_attribute a
                WHERE a.attrelid = pgtwin_table AND a.attnum > 0 AND NOT a.attisdropped) = {{expected_signature}};
        IF NOT pgtwin_fast THEN
            -- A migration on either node since `up`: the synced columns are those both sides have now,
            -- this node's writable columns whose (peer) name the chunk carries, read with this node's types.
            SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum),
                   string_agg(format('b.%I', m.name), ', ' ORDER BY a.attnum),
                   string_agg(format('%I %s', m.name, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum),
                   string_agg(format('%I', m.name), ', ' ORDER BY a.attnum),
                   string_agg(format('%I = EXCLUDED.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)
                       FILTER (WHERE NOT a.attname::text = ANY ({{key_names}})),
                   string_agg(format('t.%I::text COLLATE "C"', a.attname), ', ' ORDER BY a.attnum),
                   string_agg(format('b.%I::text COLLATE "C"', m.name), ', ' ORDER BY a.attnum),
                   string_agg(format('t.%I::text COLLATE "C"', a.attname), ', ' ORDER BY a.attnum)
                       FILTER (WHERE m.name = ANY ({{compared_names}})),
                   string_agg(format('o.%I::text COLLATE "C"', m.name), ', ' ORDER BY a.attnum)
                       FILTER (WHERE m.name = ANY ({{compared_names}}))
            INTO pgtwin_cols, pgtwin_b_cols, pgtwin_defs, pgtwin_names, pgtwin_set, pgtwin_t_text, pgtwin_b_text,
                 pgtwin_t_compared, pgtwin_o_text
            FROM pg_attribute a
            CROSS JOIN LATERAL (SELECT coalesce({{peer_names}}::jsonb ->> a.attname::text, a.attname::text) AS name) m
            WHERE a.attrelid = pgtwin_table AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              AND (a.attname::text = ANY ({{key_names}}) OR {{column_filter}})
              AND m.name IN (SELECT json_array_elements_text(pgtwin_header::json));
            IF pgtwin_cols IS NULL THEN
                RAISE EXCEPTION 'pgtwin: no column of a change from node % matches table % on node %', {{peer}}, {{table_text}}, {{local}}
                    USING ERRCODE = 'undefined_column', HINT = 'the key columns must have the same names on both nodes (or a rename in pgtwin.toml)';
            END IF;
        END IF;
        -- An update's row is written only over the version it replaced on the peer: this node holding
        -- the key with other values, or not at all, means that row changed here since (or never came:
        -- a node restored from a backup writes over rows from before it), and the write fails rather
        -- than overwrite it in silence (a replay sets it aside, with the reason, for `status`). Rows
        -- the conflict resolution weighed against this node's queued changes carry no old version: the
        -- later change won. Of a key that comes more than once (a joined replay), the first version.
        -- Compared are the columns both nodes had, with the same type, at `up`, which made their
        -- values equal: a column either node added since holds values the other never sent.
        -- Unless `pgtwin run` joined it from several entries (a key may then come more than once), an
        -- update's rows are written in one pass, as the UPDATE they were on the origin, each only where
        -- this node holds its key with the version it replaced (or where the row carries none: the
        -- later change of a key weighed against this node's queue): one reading of the chunk instead
        -- of three. Should any row find no such row to write over (it changed or went here), that pass
        -- is undone and the chunk applied below, row versions compared first. (A table of key columns
        -- alone has nothing to set: it takes the path below.)
        pgtwin_unjoined := coalesce(current_setting({{joined_setting}}, true), '') <> 'on';
        IF {{one_pass}} AND pgtwin_versioned AND pgtwin_fast AND pgtwin_unjoined THEN
            BEGIN
                PERFORM set_config('search_path', pgtwin_app_path, true);
                {{versioned_update}}
                GET DIAGNOSTICS pgtwin_count = ROW_COUNT;
                PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
                IF pgtwin_count = json_array_length(pgtwin_rows) THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION USING ERRCODE = {{undone_sqlstate}};
            EXCEPTION WHEN SQLSTATE {{undone_sqlstate}} THEN
                NULL;
            END;
        END IF;
        -- The careful way, versions compared first. A row found different may be one a concurrent
        -- transaction is changing (the peer's own transaction commits its part here first, and itself
        -- a moment later): the chunk's rows are then locked, which waits for that transaction, and
        -- compared again. A write committed after this transaction's snapshot fails it with a
        -- serialization failure, retryable, as the upsert below would (postgres_fdw's transactions
        -- here are REPEATABLE READ); only a row that still differs fails the write as stale.
        IF pgtwin_versioned THEN
            FOR pgtwin_try IN 1..2 LOOP
                IF pgtwin_fast THEN
                    {{stale_check}}
                ELSE
                    EXECUTE format({{stale_check_text}}, pgtwin_defs, coalesce(pgtwin_t_compared, 'NULL::text'),
                                   coalesce(pgtwin_o_text, 'NULL::text')) INTO pgtwin_clash USING pgtwin_rows;
                END IF;
                EXIT WHEN pgtwin_clash IS NULL OR pgtwin_try = 2;
                PERFORM FROM {{table}} t, json_to_recordset(pgtwin_rows) AS b({{key_defs}}) WHERE {{key_match}} FOR UPDATE OF t;
            END LOOP;
            IF pgtwin_clash IS NOT NULL THEN
                RAISE EXCEPTION 'pgtwin: node % updated key % of table % from a version node % does not hold (the row changed or went since)', {{peer}}, pgtwin_clash, {{table_text}}, {{local}}
                    USING ERRCODE = {{stale_sqlstate}},
                          HINT = 'the nodes differ in that row: pgtwin check lists such rows, pgtwin repair makes them equal (a node restored from a backup: see pgtwin status; a trigger of one node that changes rows applied from the other must return early where pgtwin.origin is set)';
            END IF;
        END IF;
        -- An insert: a plain INSERT, unless it meets a key this node holds (or the chunk holds one key
        -- twice); then the upsert below, which tells an insert seen before from a clash. (ON CONFLICT costs a
        -- bulk insert a quarter of its time.)
        IF pgtwin_fast AND pgtwin_op = 'I' THEN
            BEGIN
                PERFORM set_config('search_path', pgtwin_app_path, true);
                INSERT INTO {{table}} ({{cols}}) OVERRIDING SYSTEM VALUE
                    SELECT {{b_cols}} FROM pg_catalog.json_to_recordset(pgtwin_rows) AS b({{defs}});
                PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
                RETURN NEW;
            EXCEPTION WHEN unique_violation THEN
                NULL;
            END;
        END IF;
        IF pgtwin_fast THEN
            PERFORM set_config('search_path', pgtwin_app_path, true);
            IF pgtwin_replay_at IS NOT NULL THEN
                -- `pgtwin run` joins consecutive queue entries into one chunk, so a key may come more
                -- than once (one transaction after another): its last change wins.
                INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
                    SELECT DISTINCT ON ({{b_keys}}) {{b_cols}}
                    FROM ROWS FROM (json_to_recordset(pgtwin_rows) AS ({{defs}})) WITH ORDINALITY AS b({{names}}, pgtwin_n)
                    ORDER BY {{b_keys}}, b.pgtwin_n DESC
                    ON CONFLICT ({{keys}}) DO {{conflict_action}};
            ELSE
                INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
                    SELECT {{b_cols}} FROM json_to_recordset(pgtwin_rows) AS b({{defs}})
                    ON CONFLICT ({{keys}}) DO {{conflict_action}};
            END IF;
            GET DIAGNOSTICS pgtwin_count = ROW_COUNT;
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
            IF pgtwin_op <> 'I' OR pgtwin_count >= json_array_length(pgtwin_rows) THEN
                RETURN NEW;
            END IF;
            pgtwin_defs := {{defs_text}};
            pgtwin_t_text := {{t_text_text}};
            pgtwin_b_text := {{b_text_text}};
        ELSE
            IF pgtwin_replay_at IS NOT NULL THEN
                pgtwin_sql := format('INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE
                    SELECT DISTINCT ON (%s) %s
                    FROM ROWS FROM (pg_catalog.json_to_recordset($1) AS (%s)) WITH ORDINALITY AS b(%s, pgtwin_n)
                    ORDER BY %s, b.pgtwin_n DESC
                    ON CONFLICT (%s) DO %s',
                    {{table_text_quoted}}, pgtwin_cols, {{b_keys_text}}, pgtwin_b_cols, pgtwin_defs, pgtwin_names,
                    {{b_keys_text}}, {{keys_text}}, coalesce('UPDATE SET ' || pgtwin_set || ' WHERE $2 OPERATOR(pg_catalog.<>) ''I''', 'NOTHING'));
            ELSE
                pgtwin_sql := format('INSERT INTO %s AS t (%s) OVERRIDING SYSTEM VALUE
                    SELECT %s FROM pg_catalog.json_to_recordset($1) AS b(%s)
                    ON CONFLICT (%s) DO %s',
                    {{table_text_quoted}}, pgtwin_cols, pgtwin_b_cols, pgtwin_defs,
                    {{keys_text}}, coalesce('UPDATE SET ' || pgtwin_set || ' WHERE $2 OPERATOR(pg_catalog.<>) ''I''', 'NOTHING'));
            END IF;
            PERFORM set_config('search_path', pgtwin_app_path, true);
            EXECUTE pgtwin_sql USING pgtwin_rows, pgtwin_op;
            GET DIAGNOSTICS pgtwin_count = ROW_COUNT;
            PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        END IF;
        -- Rows of an insert whose keys this node holds already (fewer rows inserted than sent): the same
        -- values are an insert seen before; other values mean that key was handed out twice (a node
        -- restored from a backup hands out its ids again), and this node's row must not be overwritten
        -- in silence: the write fails here as a duplicate key would (a replay sets it aside, with the
        -- reason, for `status` and `pgtwin conflicts`).
        IF pgtwin_op = 'I' AND pgtwin_count < json_array_length(pgtwin_rows) THEN
            EXECUTE format('SELECT row(%s)::text FROM %s t JOIN json_to_recordset($1) AS b(%s) ON %s
                            WHERE (%s) IS DISTINCT FROM (%s) LIMIT 1',
                           {{b_keys_text}}, {{table_text_quoted}}, pgtwin_defs, {{key_match_text}},
                           pgtwin_t_text, pgtwin_b_text)
            INTO pgtwin_clash USING pgtwin_rows;
            IF pgtwin_clash IS NOT NULL THEN
                RAISE EXCEPTION 'pgtwin: node % inserted key % of table %, which node % holds with other values', {{peer}}, pgtwin_clash, {{table_text}}, {{local}}
                    USING ERRCODE = 'unique_violation',
                          HINT = 'the nodes differ: see pgtwin status (a node restored from a backup hands out its ids again), then pgtwin repair';
            END IF;
        END IF;
        RETURN NEW;
    -- An error of this node (its constraint, its trigger, a value its column cannot take) reaches the
    -- writer, or the runner, as what it is, with its SQLSTATE, naming the node and the table. (OTHERS
    -- leaves out a failed ASSERT, which a trigger raises as well.)
    EXCEPTION WHEN OTHERS OR assert_failure THEN
        DECLARE
            pgtwin_message text;
            pgtwin_detail text;
            pgtwin_hint text;
        BEGIN
            GET STACKED DIAGNOSTICS pgtwin_message = MESSAGE_TEXT, pgtwin_detail = PG_EXCEPTION_DETAIL,
                                    pgtwin_hint = PG_EXCEPTION_HINT;
            IF left(pgtwin_message, 7) = 'pgtwin:' THEN
                RAISE;
            END IF;
            RAISE EXCEPTION 'pgtwin: node % refused a change of table % from node %: %', {{local}}, {{table_text}}, {{peer}}, pgtwin_message
                USING ERRCODE = SQLSTATE, DETAIL = pgtwin_detail, HINT = pgtwin_hint;
        END;
    END;
END
