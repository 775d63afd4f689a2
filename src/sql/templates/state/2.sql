-- The heartbeat names the process that writes it: status tells which runner replays, and from which
-- binary.
ALTER TABLE {{runner}} ADD COLUMN IF NOT EXISTS pid integer;
ALTER TABLE {{runner}} ADD COLUMN IF NOT EXISTS version text;
