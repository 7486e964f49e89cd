-- The source (a configured app of an account) each event was pulled from, and its SubAppId
-- (NULL: the default app, pulled without one). Events stored before sources existed came from
-- the one `[vod]` source, named 'default'. The dedupe key of an event of the 'default' source
-- is its content hash, as before; any other source's keys mix in the source's name, so the
-- same content from two apps is two rows, each with its own deliveries.
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'default';
ALTER TABLE events ADD COLUMN sub_app_id INTEGER;
CREATE INDEX events_source_received_at ON events (source, received_at);
