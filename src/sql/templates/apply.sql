-- INSTEAD OF UPDATE trigger on a synced table's inbox view: applies one chunk of the peer's changes
-- set-wise, by key, touching no row the chunk does not name. It runs in the peer's postgres_fdw session
-- (or `pgtwin run`'s), whose pgtwin.origin setting keeps the table's own capture trigger from shipping
-- the rows back. (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_rows {{change_type}}[];
    pgtwin_replay_at timestamptz;
BEGIN
    IF NEW.pgtwin_batch = 'T' THEN
        TRUNCATE {{table}};
        RETURN NEW;
    END IF;
    pgtwin_rows := NEW.pgtwin_batch::{{change_type}}[];
    pgtwin_replay_at := nullif(current_setting({{replay_setting}}, true), '')::timestamptz;
    -- Changes of this table may wait in the local queue: the peer's version and ours may both have
    -- changed while the nodes were apart. The chunk's rows are locked first, so that a local transaction
    -- still writing one of them has committed, and queued its change, before the queue is read.
    IF pgtwin_replay_at IS NOT NULL OR EXISTS (SELECT FROM {{queue}} WHERE table_tag = {{tag}}) THEN
        PERFORM FROM {{table}} t, unnest(pgtwin_rows) b WHERE {{key_match}} FOR UPDATE OF t;
        IF EXISTS (SELECT FROM {{queue}} WHERE table_tag = {{tag}}) THEN
            -- A chunk `pgtwin run` joined from several queue entries has lost their separate times.
            IF current_setting({{joined_setting}}, true) = 'on' THEN
                RAISE EXCEPTION 'pgtwin: a joined chunk meets changes queued here'
                    USING ERRCODE = {{retry_unjoined}};
            END IF;
            -- Keep the later change of each key (a replayed chunk carries its commit time).
            pgtwin_rows := {{resolve}}(pgtwin_rows, coalesce(pgtwin_replay_at, transaction_timestamp()));
            IF pgtwin_rows IS NULL THEN
                RETURN NEW;
            END IF;
        END IF;
    END IF;
    -- A chunk holds one kind of change (the capture trigger builds deletes and upserts separately), so
    -- only one statement runs, planned for the chunk's real size.
    IF (pgtwin_rows[1]).pgtwin_op = 'D' THEN
        DELETE FROM {{table}} t USING unnest(pgtwin_rows) b WHERE {{key_match}};
    ELSIF pgtwin_replay_at IS NOT NULL THEN
        -- `pgtwin run` joins consecutive queue entries into one chunk, so a key may come more than
        -- once (one transaction after another): its last change wins.
        INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
            SELECT DISTINCT ON ({{b_keys}}) {{b_cols}}
            FROM unnest(pgtwin_rows) WITH ORDINALITY AS b({{all_fields}}, pgtwin_n)
            ORDER BY {{b_keys}}, b.pgtwin_n DESC
            ON CONFLICT ({{keys}}) DO {{conflict_action}};
    ELSE
        INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
            SELECT {{b_cols}} FROM unnest(pgtwin_rows) b
            ON CONFLICT ({{keys}}) DO {{conflict_action}};
    END IF;
    RETURN NEW;
END
