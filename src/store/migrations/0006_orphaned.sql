-- Why a delivery waits for a handler that is no longer configured (removed or renamed on
-- reload); NULL for every other delivery. Set and cleared as handlers come and go.
ALTER TABLE deliveries ADD COLUMN orphaned_reason TEXT;
