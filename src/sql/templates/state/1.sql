-- State schema migration 1: pgtwin's own tables, as the first versioned release found them. Every
-- statement is idempotent, so it is also a no-op on an installation made before versions were recorded.
CREATE TABLE IF NOT EXISTS {{installation}} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version text NOT NULL,
    node text NOT NULL,
    peer text NOT NULL,
    plan_hash text NOT NULL,
    created_extension boolean NOT NULL,
    tables text[] NOT NULL,
    installed_at timestamptz NOT NULL
);
-- The database installed in: a dump restored into another database is a copy, not a live link.
ALTER TABLE {{installation}} ADD COLUMN IF NOT EXISTS database_oid oid;
-- Increments `up` changed, to be restored by `down`.
CREATE TABLE IF NOT EXISTS {{sequences}} (
    schema_name text NOT NULL,
    sequence_name text NOT NULL,
    original_increment bigint NOT NULL,
    PRIMARY KEY (schema_name, sequence_name)
);
-- Changes for the peer that were not applied there directly (peer down, or async mode), in order. Each
-- entry is one chunk, exactly as it would have been shipped: `pgtwin run` ships it later.
CREATE TABLE IF NOT EXISTS {{queue}} (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_tag text NOT NULL,
    rows integer NOT NULL,
    batch text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT transaction_timestamp()
);
-- A chunk is tens of kilobytes of text: lz4 compresses it at a fraction of pglz's cost, on the
-- writer's path in async mode (servers built without lz4 keep pglz).
DO $lz4$
BEGIN
    ALTER TABLE {{queue}} ALTER COLUMN batch SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END
$lz4$;
-- When changes from the peer were last replayed here (one row per origin; `pgtwin run` locks it).
CREATE TABLE IF NOT EXISTS {{applied}} (
    origin text PRIMARY KEY,
    applied_at timestamptz NOT NULL
);
-- The peer's queue entries applied here and not yet deleted from its queue, written in the applying
-- transaction: replay is exactly once.
CREATE TABLE IF NOT EXISTS {{replayed}} (
    origin text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (origin, seq)
);
-- Keys both nodes changed while apart, and which version won (the later change; ties to the node whose
-- name sorts last).
CREATE TABLE IF NOT EXISTS {{conflicts}} (
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
CREATE TABLE IF NOT EXISTS {{link}} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    needs_repair_since timestamptz,
    reason text
);
INSERT INTO {{link}} VALUES (true, NULL, NULL) ON CONFLICT DO NOTHING;
-- `pgtwin run`'s heartbeat, written on both nodes every few seconds while it replays: `status` tells
-- from it whether a runner is alive, and when it last found the queues drained.
CREATE TABLE IF NOT EXISTS {{runner}} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seen_at timestamptz NOT NULL,
    drained_at timestamptz,
    host text
);
-- Queue entries the peer refused for a reason of data (a constraint, a value its column cannot take):
-- set aside with the reason, so that every later change still arrives. `status` counts them, `pgtwin
-- conflicts` lists them, `repair` resolves them.
CREATE TABLE IF NOT EXISTS {{set_aside}} (
    seq bigint PRIMARY KEY,
    table_tag text NOT NULL,
    rows integer NOT NULL,
    batch text NOT NULL,
    changed_at timestamptz NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL
);
