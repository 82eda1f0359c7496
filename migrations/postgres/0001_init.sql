-- Dash on PostgreSQL: pipelines, the dedupe index and the native per-minute rollup.
-- The events table itself is created by the store right after migrations (under the same
-- advisory lock), because its shape depends on whether TimescaleDB is available:
-- a hypertable there, a table partitioned by day otherwise. See ARCHITECTURE.md.
-- Never edit this file once released; add a new one.

CREATE TABLE pipelines (
    id                  TEXT        PRIMARY KEY,
    name                TEXT        NOT NULL UNIQUE,
    secret              TEXT        NOT NULL,           -- whsec_… (needed to verify HMACs)
    token_hash          TEXT        NOT NULL,           -- sha256 hex of the bearer token
    previous_secret     TEXT,                           -- still accepted until previous_expires_at
    previous_token_hash TEXT,
    previous_expires_at TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Updated in each batch transaction: the pipeline's sequencer and totals.
    seq                 BIGINT      NOT NULL DEFAULT 0,
    event_count         BIGINT      NOT NULL DEFAULT 0,
    duplicate_count     BIGINT      NOT NULL DEFAULT 0,
    last_event_at       TIMESTAMPTZ
);

-- The dedupe key. On a hypertable a unique index must include the time column, so the key
-- lives here, written in the same transaction as the events and pruned after the dedupe window.
CREATE TABLE event_dedupe (
    pipeline_id TEXT        NOT NULL,
    event_id    TEXT        NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pipeline_id, event_id)
);
-- No index on seen_at: it would cost every batch an index insert, while pruning runs hourly
-- and can afford a sequential scan.

-- Events per minute (by event time), maintained in the batch transaction on plain PostgreSQL.
-- With TimescaleDB a continuous aggregate (event_rollup_minute_cagg) is used instead.
CREATE TABLE event_rollup_minute (
    pipeline_id TEXT        NOT NULL,
    minute      TIMESTAMPTZ NOT NULL,
    event_count BIGINT      NOT NULL,
    PRIMARY KEY (pipeline_id, minute)
);

-- Which events layout this database uses ('timescale' or 'partitioned'); chosen once.
CREATE TABLE dash_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
