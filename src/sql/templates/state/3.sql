-- pgtwin's advisory lock keys, one per purpose, random and readable by pgtwin's role alone: another
-- role cannot take a lock it cannot name, and a key it learnt (pg_locks shows held keys) is replaced
-- (crate::locks).
CREATE TABLE IF NOT EXISTS {{locks}} (
    purpose text PRIMARY KEY,
    key bigint NOT NULL
);
INSERT INTO {{locks}}
SELECT purpose, {{random_key}}
FROM unnest(ARRAY['install', 'runner']) AS purpose
ON CONFLICT (purpose) DO NOTHING;
