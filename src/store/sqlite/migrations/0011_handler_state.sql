-- Paused handlers (issue 14): a row while the handler is paused, by the operator
-- (`handlers pause`) or by its breaker. The dispatcher claims nothing of a paused handler
-- but, for a breaker pause, one probe delivery each time probe_at comes.
CREATE TABLE handler_state (
    handler TEXT PRIMARY KEY,
    paused_at INTEGER NOT NULL,
    reason TEXT,
    paused_by TEXT NOT NULL CHECK (paused_by IN ('operator', 'breaker')),
    probe_at INTEGER
) WITHOUT ROWID;
