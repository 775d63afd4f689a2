-- Statement trigger on a synced table: ships the statement's changed rows to the peer as data, in
-- chunks (see docs/change-format.md), each chunk one `UPDATE` of the peer's inbox view. postgres_fdw
-- sends such an UPDATE as a single remote statement (a "direct modification": no prepare, no per-row
-- round trips), and the peer's INSTEAD OF trigger applies the chunk set-wise. An empty statement costs
-- no round trip. Rows travel by column name (row_to_json), so this function names no column but the
-- key: a column added, dropped or renamed on this node never makes the table's writes fail.
-- (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_chunk text;
    pgtwin_rows integer;
    pgtwin_queue boolean;
    pgtwin_columns text;
BEGIN
    -- Writes applied by pgtwin (from the peer, or by repair) carry pgtwin.origin: never ship them back.
    -- Any role can set that, so it counts only in a session of the role that installed pgtwin (this
    -- function's owner: SECURITY DEFINER makes it current_user here), which pgtwin's own sessions use.
    IF coalesce(current_setting({{origin_setting}}, true), '') <> '' AND session_user = current_user THEN
        RETURN NULL;
    END IF;
    -- A copy of this database (a dump restored elsewhere) is not a live link: it captures nothing.
    IF (SELECT oid FROM pg_database WHERE datname = current_database()) <> {{database_oid}} THEN
        RETURN NULL;
    END IF;
    -- Queue when the mode says so, or while older changes wait in the queue (the peer was found
    -- down): a change must never overtake an earlier one of the same key.
    pgtwin_queue := {{always_queue}} OR EXISTS (SELECT FROM {{queue}});
    IF TG_OP = 'TRUNCATE' THEN
        -- A BEFORE trigger: the rows are still here. With the peer reachable, one TRUNCATE travels.
        -- Otherwise the truncate is queued as the deletion of every key it removes, so that the replay
        -- weighs it key by key against the peer's own changes made meanwhile (a queued TRUNCATE would
        -- wipe those too).
        IF NOT pgtwin_queue THEN
            pgtwin_queue := {{ship}}('T', 1, false);
            IF NOT pgtwin_queue THEN
                RETURN NULL;
            END IF;
        END IF;
        FOR pgtwin_chunk, pgtwin_rows IN {{truncated_keys}}
        LOOP
            PERFORM {{ship}}(pgtwin_chunk, pgtwin_rows, true);
        END LOOP;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- Transition tables do not pair old and new rows: remove the keys this statement changed away
        -- from, then upsert every new row. EXCEPT, not NOT EXISTS: transition tables have no statistics,
        -- and a nested-loop anti-join over two 100,000-row tables never ends.
        FOR pgtwin_chunk, pgtwin_rows IN {{keys_changed_away}}
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR pgtwin_chunk, pgtwin_rows IN {{deleted_keys}}
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
        RETURN NULL;
    END IF;
    -- The columns as they are now, in the order row_to_json writes them, as compact JSON (the form
    -- the peer compares with the list `up` saw: crate::change::columns_json).
    pgtwin_columns := (SELECT {{columns_list}} FROM pg_attribute a
                       WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped);
    IF TG_OP = 'INSERT' THEN
        FOR pgtwin_chunk, pgtwin_rows IN {{inserted_rows}}
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
    ELSE
        FOR pgtwin_chunk, pgtwin_rows IN {{new_rows}}
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
    END IF;
    RETURN NULL;
END
