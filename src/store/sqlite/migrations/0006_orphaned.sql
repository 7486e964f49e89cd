-- Why a delivery waits for a handler that is no longer configured (removed or renamed on
-- reload); NULL for every other delivery. Set and cleared as handlers come and go.
ALTER TABLE deliveries ADD COLUMN orphaned_reason TEXT;
-- Finding the orphans of a handler that is back must not scan every delivery.
CREATE INDEX deliveries_orphaned ON deliveries (handler) WHERE orphaned_reason IS NOT NULL;
-- The counts of deliveries not done read orphaned_reason too: keep their index covering.
DROP INDEX deliveries_not_done;
CREATE INDEX deliveries_not_done ON deliveries (handler, state, created_at, orphaned_reason) WHERE state != 'done';
