-- Less work per delivery on the server (issue 28).
--
-- Unlike SQLite, PostgreSQL writes a new entry into every index of a table whenever an
-- UPDATE changes an indexed column, and each state change of a delivery does (`state`,
-- `updated_at`, `lease_until`). An index over all rows therefore costs three entries per
-- delivery (pending, running, done); a partial one only those of its state.
--
-- `deliveries_handler` and `deliveries_updated` covered every row. Claims, counts and
-- orphan checks read the partial indexes (`deliveries_due`, `deliveries_running_lease`,
-- `deliveries_not_done`, `deliveries_orphaned`); what needed the two is served as follows:
-- a handler's last success (`handlers list`) and the listing of done deliveries read
-- `deliveries_done`, written once per delivery; dead ones `deliveries_dead_updated`; a
-- listing of every state merges each state's newest rows (`PgStore::list_deliveries`).
DROP INDEX deliveries_handler;
DROP INDEX deliveries_updated;
CREATE INDEX deliveries_done ON deliveries (updated_at) WHERE state = 'done';

-- Event payloads above about 2 KB are compressed; lz4 costs a fraction of PostgreSQL's
-- default (pglz: 6 % of the server's CPU in a drain of API 3.0 events). Only new values
-- are compressed with it. A server built without lz4 (or older than PostgreSQL 14) keeps
-- pglz: the change is skipped, not an error.
DO $$ BEGIN
  EXECUTE 'ALTER TABLE events ALTER COLUMN content SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN NULL;
END $$;
