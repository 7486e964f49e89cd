-- What the running daemon last said about itself, for `vod-eventd status`.
CREATE TABLE daemon_state (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
