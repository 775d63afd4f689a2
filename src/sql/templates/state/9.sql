-- A pending chunk lives for one transaction. pglz, the default compression, cost a bulk statement more
-- than its travel to the peer (measured: about 70 ms of 1.2 s for 100,000 inserted rows); lz4 costs
-- next to nothing and still keeps large rows small (a server built without it keeps pglz).
DO $lz4$
BEGIN
    ALTER TABLE {{pending}} ALTER COLUMN batch SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$lz4$;
