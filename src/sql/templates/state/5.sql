-- The cluster `up` installed in (pg_control_system()'s system identifier), beside its database's OID:
-- a dump restored into another cluster can get the same OID (the first database a fresh cluster
-- creates gets the same one each time), never the same cluster.
ALTER TABLE {{installation}} ADD COLUMN IF NOT EXISTS system_identifier bigint;
