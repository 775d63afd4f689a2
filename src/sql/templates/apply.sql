-- Statement trigger on a synced table's inbox: applies one batch of the peer's changes set-wise, by
-- key, touching no row the batch does not name. It runs in the peer's postgres_fdw session, whose
-- pgtwin.origin setting keeps the table's own capture trigger from shipping these rows back.
-- (No names in these comments: an identifier may hold a newline.)
BEGIN
    IF EXISTS (SELECT FROM {{batch}} WHERE {{op}} = 'T') THEN
        TRUNCATE {{table}};
    END IF;
    DELETE FROM {{table}} t USING {{batch}} b WHERE b.{{op}} = 'D' AND {{key_match}};
    INSERT INTO {{table}} AS t ({{cols}}) OVERRIDING SYSTEM VALUE
        SELECT {{cols}} FROM {{batch}} WHERE {{op}} = 'U'
        ON CONFLICT ({{keys}}) DO {{conflict_action}};
    -- The inbox only carries rows into this trigger; nothing stays there.
    DELETE FROM {{inbox}};
    RETURN NULL;
END
