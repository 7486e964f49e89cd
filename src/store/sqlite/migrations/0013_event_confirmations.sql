-- Confirmations in a table of their own (issue 11). Marking a row confirmed used to rewrite
-- the event's row, content and all, one commit after storing it: for API 3.0 events (about
-- 2.4 kB each) that wrote every event's pages twice. A confirmation is now a small row
-- appended here, a few hundred to a page. Rows confirmed before this migration keep their
-- `events.confirmed_at`; readers take that first, then this table.
CREATE TABLE event_confirmations (
    event_id      INTEGER PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    confirmed_at  INTEGER NOT NULL  -- Unix ms, first successful confirm of a handle
);
