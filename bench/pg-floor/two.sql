-- As three.sql, with each delivery claimed in the transaction that creates it (inserted
-- running): two commits per pull, one row version fewer per delivery.
\set k random(1, :n - 16)
BEGIN;
WITH e AS (
    INSERT INTO events (dedupe_key, api, event_type, file_id, content, received_at, last_seen_at)
    SELECT sha256(convert_to(random()::text || n, 'UTF8')), 'v3', event_type, file_id, content, 1, 1
    FROM floor_src WHERE n BETWEEN :k AND :k + 15 RETURNING id, file_id),
 f AS (INSERT INTO event_files (file_id, event_id, role) SELECT file_id, id, 'output' FROM e WHERE file_id IS NOT NULL),
 d AS (INSERT INTO deliveries (event_id, handler, webhook_id, state, attempts, next_attempt_at, created_at, updated_at,
                               lease_until, claim_token, claimed_by)
       SELECT id, 'sink', 'msg_' || id, 'running', 1, 1, 1, 1, 1, 1, 'x' FROM e RETURNING id)
SELECT (SELECT min(id) FROM e) AS lo, (SELECT max(id) FROM e) AS hi, min(id) AS dlo, max(id) AS dhi FROM d \gset
COMMIT;
BEGIN;
WITH d AS (UPDATE deliveries SET state = 'done', lease_until = NULL, claim_token = NULL, claimed_by = NULL,
                  last_status = 200, updated_at = 2
           WHERE id BETWEEN :dlo AND :dhi RETURNING id)
INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, status)
SELECT id, 1, 1, 1, 'done', 200 FROM d;
UPDATE events SET confirmed_at = 2 WHERE id BETWEEN :lo AND :hi;
COMMIT;
