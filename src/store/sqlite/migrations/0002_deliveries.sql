-- Handler deliveries: one row per (event, handler) routed when the event was first stored,
-- plus one per replay. webhook_id is stable per event and handler, so every retry and
-- replay carries the same id.
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    event_id         INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    handler          TEXT    NOT NULL,
    webhook_id       TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,  -- Unix ms
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_error       TEXT,
    last_status      INTEGER
);
CREATE INDEX deliveries_due ON deliveries (handler, state, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_state ON deliveries (state, handler);

-- Every attempt of every delivery.
CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,  -- Unix ms
    duration_ms  INTEGER NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('done', 'retry', 'dead')),
    status       INTEGER,           -- HTTP status or exit code
    error        TEXT,
    excerpt      TEXT               -- start of the response body or the hook's output
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);

-- DRM data keys fetched for EDKs (legacy HLS encryption). Never logged.
CREATE TABLE drm_keys (
    edk         TEXT    PRIMARY KEY,
    dk          BLOB    NOT NULL,
    file_id     TEXT,
    key_source  TEXT,
    definition  INTEGER,
    event_id    INTEGER,
    fetched_at  INTEGER NOT NULL
);
CREATE INDEX drm_keys_file_id ON drm_keys (file_id);
