-- INSTEAD OF UPDATE trigger on a synced table's inbox view: applies one chunk of the peer's changes
-- set-wise, by key, touching no row the chunk does not name. It runs in the peer's postgres_fdw
-- session, whose pgtwin.origin setting keeps the table's own capture trigger from shipping the rows back.
-- (No names in these comments: an identifier may hold a newline.)
DECLARE
    pgtwin_rows {{change_type}}[];
BEGIN
    IF NEW.pgtwin_batch = 'T' THEN
        TRUNCATE {{table}};
        RETURN NEW;
    END IF;
    pgtwin_rows := NEW.pgtwin_batch::{{change_type}}[];
    DELETE FROM {{table}} t USING unnest(pgtwin_rows) b WHERE b.pgtwin_op = 'D' AND {{key_match}};
    INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
        SELECT {{b_cols}} FROM unnest(pgtwin_rows) b WHERE b.pgtwin_op = 'U'
        ON CONFLICT ({{keys}}) DO {{conflict_action}};
    RETURN NEW;
END
