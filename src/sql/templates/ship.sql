-- Sends one chunk of changes to the peer, or queues it. Returns whether it queued, so that the rest of
-- the statement follows the same way and no key's changes are reordered.
DECLARE
    pgtwin_message text;
BEGIN
    IF NOT pgtwin_queue THEN
        {{direct}}
    END IF;
    -- A probe that found the peer away is not a change.
    IF pgtwin_chunk = {{probe}} THEN
        RETURN true;
    END IF;
    PERFORM {{enqueue}}({{tag}}, pgtwin_chunk, pgtwin_rows, pgtwin_keys);
    RETURN true;
END
