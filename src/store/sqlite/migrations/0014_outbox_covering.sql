-- One index fewer per delivery state change (issue 11). `deliveries_not_done` was written
-- three times over a delivery's life (pending, running, done) only to count deliveries per
-- handler and state; the partial indexes each state already has now carry those columns
-- (`state` too, constant in each: SQLite reads an index alone only when it holds every
-- column the query names, its WHERE included).
DROP INDEX deliveries_not_done;
-- Claims read it in key order (due time, then age): no sort, whatever the backlog.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (handler, next_attempt_at, created_at, orphaned_reason, state)
    WHERE state = 'pending';
DROP INDEX deliveries_running_lease;
CREATE INDEX deliveries_running_lease ON deliveries (lease_until, handler, created_at, orphaned_reason, state)
    WHERE state = 'running';
DROP INDEX deliveries_dead_updated;
CREATE INDEX deliveries_dead_updated ON deliveries (updated_at, handler, state) WHERE state = 'dead';
