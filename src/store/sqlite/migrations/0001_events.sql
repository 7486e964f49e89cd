-- One row per distinct event (dedupe_key = SHA-256 of the canonical eventContent).
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    dedupe_key    BLOB    NOT NULL UNIQUE,
    api           TEXT    NOT NULL DEFAULT 'v2',
    event_type    TEXT    NOT NULL,
    version       TEXT,
    file_id       TEXT,
    task_id       TEXT,
    content       TEXT    NOT NULL,  -- eventContent exactly as received
    received_at   INTEGER NOT NULL,  -- Unix milliseconds, first delivery
    last_seen_at  INTEGER NOT NULL,  -- Unix milliseconds, latest delivery
    times_seen    INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_type_received_at ON events (event_type, received_at);
CREATE INDEX events_file_id ON events (file_id) WHERE file_id IS NOT NULL;
CREATE INDEX events_task_id ON events (task_id) WHERE task_id IS NOT NULL;
