-- Statement trigger on a synced table: ships the statement's changed rows to the peer's inbox in one INSERT,
-- which postgres_fdw sends in batches; the peer's apply trigger then works on them set-wise.
BEGIN
    -- Writes applied by pgtwin (from the peer, or by repair) carry pgtwin.origin: never ship them back.
    IF coalesce(current_setting('pgtwin.origin', true), '') <> '' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {{peer}} ({{op}}, {{cols}}) SELECT 'U', {{cols}} FROM {{new}};
    ELSIF TG_OP = 'UPDATE' THEN
        -- Transition tables do not pair old and new rows: remove the keys this statement changed away
        -- from, then upsert every new row.
        INSERT INTO {{peer}} ({{op}}, {{keys}})
            SELECT 'D', {{old_keys}} FROM {{old}} o
            WHERE NOT EXISTS (SELECT FROM {{new}} n WHERE {{key_match}});
        INSERT INTO {{peer}} ({{op}}, {{cols}}) SELECT 'U', {{cols}} FROM {{new}};
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {{peer}} ({{op}}, {{keys}}) SELECT 'D', {{keys}} FROM {{old}};
    ELSE
        INSERT INTO {{peer}} ({{op}}) VALUES ('T');
    END IF;
    RETURN NULL;
END
