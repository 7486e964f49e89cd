-- Range replays and retries (`events replay --since`, `deliveries retry --state`) run in
-- batches, each committed with the job's cursor (the last event or delivery id done), so a
-- run interrupted at any point and started again with the same arguments resumes after
-- the last committed batch. `args` is the command's arguments as given; `since_ms` and
-- `until_ms` the window they resolved to on the first run.
CREATE TABLE range_jobs (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('replay', 'retry')),
    args         TEXT    NOT NULL,
    since_ms     INTEGER NOT NULL,
    until_ms     INTEGER NOT NULL,
    cursor       INTEGER NOT NULL DEFAULT 0,
    total        INTEGER NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    UNIQUE (kind, args)
);

-- Alerts (the daemon's own events): when each kind of alert about each subject (a handler,
-- a source) was last stored, and how many were held back since, so that at most one per
-- kind and subject is stored per minute.
CREATE TABLE alert_log (
    kind        TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    last_at     INTEGER NOT NULL,
    held_back   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, subject)
) WITHOUT ROWID;

-- Finding the deliveries that went dead since a moment reads only the dead ones.
CREATE INDEX deliveries_dead_updated ON deliveries (updated_at) WHERE state = 'dead';
