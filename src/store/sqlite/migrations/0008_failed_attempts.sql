-- `status` draws the failed attempts of the last 24 hours per handler; this index holds only
-- the failed ones (outcome retry or dead), so that costs what failed, not the whole history.
CREATE INDEX attempts_failed ON attempts (started_at) WHERE outcome != 'done';
