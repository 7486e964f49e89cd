-- Repeated events. Events carry no id, so a content seen again is normally a redelivery and
-- folds into its row; but once a handle of that row has been confirmed (ConfirmEvent answered
-- success), Tencent does not deliver that event again, so the same content arriving later is a
-- new occurrence of it (a cast going Working -> Idle -> Working, the same restore weeks apart)
-- and gets a row of its own. Rows become unique on (dedupe_key, occurrence); confirmed_at
-- records the confirmation. Rows stored before this migration have no record of it (NULL): a
-- repeat of one of them folds once, as before, and its next confirmation is recorded.
CREATE TABLE events_new (
    id            INTEGER PRIMARY KEY,
    dedupe_key    BLOB    NOT NULL,
    occurrence    INTEGER NOT NULL DEFAULT 1,
    api           TEXT    NOT NULL DEFAULT 'v2',
    event_type    TEXT    NOT NULL,
    version       TEXT,
    file_id       TEXT,
    task_id       TEXT,
    content       TEXT    NOT NULL,  -- eventContent exactly as received
    received_at   INTEGER NOT NULL,  -- Unix milliseconds, first delivery
    last_seen_at  INTEGER NOT NULL,  -- Unix milliseconds, latest delivery
    times_seen    INTEGER NOT NULL DEFAULT 1,
    confirmed_at  INTEGER,           -- Unix milliseconds, first successful confirm of a handle
    UNIQUE (dedupe_key, occurrence)
);
INSERT INTO events_new (id, dedupe_key, api, event_type, version, file_id, task_id, content, received_at, last_seen_at, times_seen)
    SELECT id, dedupe_key, api, event_type, version, file_id, task_id, content, received_at, last_seen_at, times_seen FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_type_received_at ON events (event_type, received_at);
CREATE INDEX events_file_id ON events (file_id) WHERE file_id IS NOT NULL;
CREATE INDEX events_task_id ON events (task_id) WHERE task_id IS NOT NULL;

-- Every file an event names (outputs, inputs, deleted files), so an event is found by any of
-- them. events.file_id stays the primary one. Rows stored before this migration are indexed by
-- the daemon in the background, newest first, below the id recorded here.
CREATE TABLE event_files (
    file_id   TEXT    NOT NULL,
    event_id  INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    role      TEXT    NOT NULL CHECK (role IN ('output', 'input', 'deleted')),
    PRIMARY KEY (file_id, event_id)
) WITHOUT ROWID;
CREATE INDEX event_files_event ON event_files (event_id);
INSERT INTO daemon_state (key, value)
    SELECT 'event_files_backfill_below', CAST(max(id) + 1 AS TEXT) FROM events HAVING max(id) IS NOT NULL;
