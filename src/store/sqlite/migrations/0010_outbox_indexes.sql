-- Fewer index pages per delivery state change (group commit, issue 11).
-- Claims only ever look for pending rows: index just those, so a delivery leaves this index
-- when it is claimed and never comes back once done (the history costs it nothing).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (handler, next_attempt_at) WHERE state = 'pending';
-- No query needs (state, handler) over every row: the counts read deliveries_not_done, and
-- listings by state scan in updated_at order either way. It was rewritten by every change.
DROP INDEX deliveries_state;
-- Listing handlers (`handlers list`) seeks handler names and each handler's newest rows: an
-- index on the name alone serves both and, unlike one with the state in it, never changes
-- after the delivery is inserted.
CREATE INDEX deliveries_handler ON deliveries (handler);
