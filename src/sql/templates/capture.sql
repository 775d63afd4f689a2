-- Statement trigger on a synced table: ships the statement's changed rows to the peer as data, in
-- chunks of {{chunk}} rows, each chunk one `UPDATE` of the peer's inbox view. postgres_fdw sends such an
-- UPDATE as a single remote statement (a "direct modification": no prepare, no per-row round trips),
-- and the peer's INSTEAD OF trigger applies the chunk set-wise. An empty statement costs no round trip.
-- (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_chunk text;
    pgtwin_rows integer;
    pgtwin_queue boolean;
BEGIN
    -- Writes applied by pgtwin (from the peer, or by repair) carry pgtwin.origin: never ship them back.
    IF coalesce(current_setting({{origin_setting}}, true), '') <> '' THEN
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
        FOR pgtwin_chunk, pgtwin_rows IN
            SELECT array_agg(c)::text, count(*) FROM (
                SELECT ROW('D', {{old_key_row}})::{{change_type}} AS c, (row_number() OVER () - 1) / {{chunk}} AS chunk_no
                FROM {{table}} o) s
            GROUP BY chunk_no
        LOOP
            PERFORM {{ship}}(pgtwin_chunk, pgtwin_rows, true);
        END LOOP;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- Transition tables do not pair old and new rows: remove the keys this statement changed away
        -- from, then upsert every new row. EXCEPT, not NOT EXISTS: transition tables have no statistics,
        -- and a nested-loop anti-join over two 100,000-row tables never ends.
        FOR pgtwin_chunk, pgtwin_rows IN
            SELECT array_agg(c)::text, count(*) FROM (
                SELECT ROW('D', {{old_key_row}})::{{change_type}} AS c, (row_number() OVER () - 1) / {{chunk}} AS chunk_no
                FROM (SELECT {{keys}} FROM {{old}} EXCEPT ALL SELECT {{keys}} FROM {{new}}) o) s
            GROUP BY chunk_no
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR pgtwin_chunk, pgtwin_rows IN
            SELECT array_agg(c)::text, count(*) FROM (
                SELECT ROW('D', {{old_key_row}})::{{change_type}} AS c, (row_number() OVER () - 1) / {{chunk}} AS chunk_no
                FROM {{old}} o) s
            GROUP BY chunk_no
        LOOP
            pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
        END LOOP;
        RETURN NULL;
    END IF;
    FOR pgtwin_chunk, pgtwin_rows IN
        SELECT array_agg(c)::text, count(*) FROM (
            SELECT ROW('U', {{new_row}})::{{change_type}} AS c, (row_number() OVER () - 1) / {{chunk}} AS chunk_no
            FROM {{new}} n) s
        GROUP BY chunk_no
    LOOP
        pgtwin_queue := {{ship}}(pgtwin_chunk, pgtwin_rows, pgtwin_queue);
    END LOOP;
    RETURN NULL;
END
