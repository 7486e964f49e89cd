-- A running delivery carries a lease (Unix ms). If it passes before the attempt's outcome
-- is written, the dispatcher's sweep returns the delivery to pending, without a restart.
ALTER TABLE deliveries ADD COLUMN lease_until INTEGER;
CREATE INDEX deliveries_running_lease ON deliveries (lease_until) WHERE state = 'running';
-- `status` and `/metrics` count the deliveries that are not done; this index holds only
-- those rows, so the counts cost what is pending or dead, not the whole history.
CREATE INDEX deliveries_not_done ON deliveries (handler, state, created_at) WHERE state != 'done';
