-- Fewer random index pages per stored event (ingest group commit, issue 11).
-- No query looks events up by task id: the index was only ever written.
DROP INDEX events_task_id;
-- Every file an event names, its primary file included, is in event_files (indexed by file
-- id); rows stored before that table existed are matched by `events.file_id` through a
-- scan of the rowid range not yet indexed (see backfill_files), which needs no index.
DROP INDEX events_file_id;
