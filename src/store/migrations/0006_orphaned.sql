-- Why a delivery waits for a handler that is no longer configured (removed or renamed on
-- reload); NULL for every other delivery. Set and cleared as handlers come and go.
ALTER TABLE deliveries ADD COLUMN orphaned_reason TEXT;
-- Finding the orphans of a handler that is back must not scan every delivery.
CREATE INDEX deliveries_orphaned ON deliveries (handler) WHERE orphaned_reason IS NOT NULL;
