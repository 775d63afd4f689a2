-- Statement trigger on a synced table: writes the statement's changed rows as chunks of changes (see
-- docs/change-format.md). In sync mode they wait in the pending table until the transaction commits,
-- when the deferred flush trigger sends all of them to the peer (flush.sql): the peer's row locks
-- are held only while the transaction commits. In async mode they go to the queue. Rows travel by
-- column name (row_to_json), so this function names no column but the key: a column added, dropped or
-- renamed on this node never makes the table's writes fail.
-- (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_chunk text;
    pgtwin_rows integer;
    pgtwin_queue boolean;
    pgtwin_columns text;
    pgtwin_flush boolean;
    -- The chunk's keys, as comparable text (crate::change::key_text_of).
    pgtwin_keys text[];
    -- An UPDATE that changed no key.
    pgtwin_keys_kept boolean := false;
BEGIN
    -- Writes applied by pgtwin (from the peer, or by repair) carry pgtwin.origin: never ship them back.
    -- Any role can set that, so it counts only in a session of the role that installed pgtwin (this
    -- function's owner: SECURITY DEFINER makes it current_user here), which pgtwin's own sessions use.
    IF coalesce(current_setting({{origin_setting}}, true), '') <> '' AND session_user = current_user THEN
        RETURN NULL;
    END IF;
    -- A copy of this database (a dump restored elsewhere) is not a live link: it captures nothing.
    IF (SELECT oid FROM pg_database WHERE datname = current_database()) <> {{database_oid}}
       OR (SELECT system_identifier FROM pg_control_system()) <> {{system_identifier}} THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        -- A BEFORE trigger: the rows are still here. With nothing older queued, the peer reachable (the
        -- probe, an empty truncate, opens the peer's transaction now) and the transaction not
        -- SERIALIZABLE (sync mode), the truncate travels with the transaction's other changes, in its
        -- place among them, joined with the other tables the same TRUNCATE empties into one TRUNCATE
        -- on the peer (tables linked by a foreign key can only be truncated together). Otherwise it
        -- is queued as the deletion of every key it removes, so that the replay weighs it key by key
        -- against the peer's own changes made meanwhile (a queued TRUNCATE would wipe those too).
        IF NOT ({{always_queue}} OR current_setting('transaction_isolation') = 'serializable'
                OR {{queue_holds_any}} OR {{ship}}({{probe}}, 1, false, NULL)) THEN
            pgtwin_chunk := 'T';
            pgtwin_rows := 1;
            pgtwin_keys := NULL;
            {{send}}
            RETURN NULL;
        END IF;
        -- After the transaction's earlier changes, like any other change (sync mode: the flush finds
        -- the queue, or the peer, as this did, and queues them all in order).
        FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{truncated_keys}}
        LOOP
            {{send}}
        END LOOP;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- A statement that changed keys travels as the deletion of every row it updated, then their
        -- new versions (with no old version: a new key has none): upserted one by one, a new key
        -- could meet an old row of the peer still holding a unique value that the origin, updating its
        -- rows in place, never met (UPDATE ... SET id = id + 1 beside a unique column). EXCEPT, not NOT
        -- EXISTS: transition tables have no statistics, and a nested-loop anti-join over two
        -- 100,000-row tables never ends.
        -- Otherwise each row carries the version it replaced (crate::change::BEFORE), and the peer
        -- writes it only over that version.
        pgtwin_keys_kept := NOT EXISTS ({{keys_changed_away}});
        IF NOT pgtwin_keys_kept THEN
            FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{updated_keys}}
            LOOP
                {{send}}
            END LOOP;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{deleted_keys}}
        LOOP
            {{send}}
        END LOOP;
        RETURN NULL;
    END IF;
    -- The columns as they are now, in the order row_to_json writes them, as compact JSON (the form
    -- the peer compares with the list `up` saw: crate::change::columns_json).
    pgtwin_columns := (SELECT {{columns_list}} FROM pg_attribute a
                       WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped);
    IF TG_OP = 'INSERT' THEN
        FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{inserted_rows}}
        LOOP
            {{send}}
        END LOOP;
    ELSIF pgtwin_keys_kept THEN
        FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{updated_rows}}
        LOOP
            {{send}}
        END LOOP;
    ELSE
        FOR pgtwin_chunk, pgtwin_rows, pgtwin_keys IN {{new_rows}}
        LOOP
            {{send}}
        END LOOP;
    END IF;
    RETURN NULL;
END
