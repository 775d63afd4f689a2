-- pgtwin's own state on a node. Created once and kept by every later `up`: the queue and the record of
-- what was applied must survive a reinstall. `down` drops it with the schema.
CREATE TABLE IF NOT EXISTS pgtwin.installation (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version text NOT NULL,
    node text NOT NULL,
    peer text NOT NULL,
    plan_hash text NOT NULL,
    created_extension boolean NOT NULL,
    tables text[] NOT NULL,
    installed_at timestamptz NOT NULL
);
-- Increments `up` changed, to be restored by `down`.
CREATE TABLE IF NOT EXISTS pgtwin.sequences (
    schema_name text NOT NULL,
    sequence_name text NOT NULL,
    original_increment bigint NOT NULL,
    PRIMARY KEY (schema_name, sequence_name)
);
-- Changes for the peer that were not applied there directly (peer down, or async mode), in order. Each
-- entry is one chunk, exactly as it would have been shipped: `pgtwin run` ships it later.
CREATE TABLE IF NOT EXISTS pgtwin.queue (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_tag text NOT NULL,
    rows integer NOT NULL,
    batch text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT transaction_timestamp()
);
-- The peer's last queue entry applied here, written in the applying transaction: replay is exactly once.
CREATE TABLE IF NOT EXISTS pgtwin.applied (
    origin text PRIMARY KEY,
    seq bigint NOT NULL,
    applied_at timestamptz NOT NULL
);
-- Keys both nodes changed while apart, and which version won (the later change; ties to the node whose
-- name sorts last).
CREATE TABLE IF NOT EXISTS pgtwin.conflicts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resolved_at timestamptz NOT NULL DEFAULT now(),
    table_name text NOT NULL,
    key text NOT NULL,
    local_change text,
    remote_change text,
    winner text NOT NULL
);
-- Set when the queue outgrew its limit: changes are no longer recorded, and only a repair joins the
-- nodes again.
CREATE TABLE IF NOT EXISTS pgtwin.link (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    needs_repair_since timestamptz,
    reason text
);
INSERT INTO pgtwin.link VALUES (true, NULL, NULL) ON CONFLICT DO NOTHING;
