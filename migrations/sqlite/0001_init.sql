-- Dash on SQLite: pipelines, events, and the per-minute rollup.
-- Times are unix milliseconds (INTEGER). Never edit this file once released; add a new one.

-- One row per pipeline. `seq`, `event_count` and friends are updated in the same transaction
-- as each batch, so they are the single sequencer for the pipeline's live updates.
CREATE TABLE pipelines (
    id                  TEXT    PRIMARY KEY,
    name                TEXT    NOT NULL UNIQUE,
    secret              TEXT    NOT NULL,           -- whsec_… (needed to verify HMACs)
    token_hash          TEXT    NOT NULL,           -- sha256 hex of the bearer token
    previous_secret     TEXT,                       -- still accepted until previous_expires_at
    previous_token_hash TEXT,
    previous_expires_at INTEGER,
    created_at          INTEGER NOT NULL,
    seq                 INTEGER NOT NULL DEFAULT 0,
    event_count         INTEGER NOT NULL DEFAULT 0,
    duplicate_count     INTEGER NOT NULL DEFAULT 0,
    last_event_at       INTEGER
);

-- A rowid table: inserts append in arrival order. The unique index is the dedupe key.
CREATE TABLE events (
    pipeline_id TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload     TEXT    NOT NULL
);
CREATE UNIQUE INDEX events_dedupe ON events (pipeline_id, event_id);
CREATE INDEX events_by_time ON events (pipeline_id, event_time DESC);

-- Events per minute (by event time), maintained in the batch transaction.
CREATE TABLE event_rollup_minute (
    pipeline_id TEXT    NOT NULL,
    minute      INTEGER NOT NULL,   -- unix ms at the start of the minute
    event_count INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, minute)
) WITHOUT ROWID;
