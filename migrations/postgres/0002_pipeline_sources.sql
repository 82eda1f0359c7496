-- Polling sources: a pipeline may fetch its events from an HTTP API on a schedule.
-- Times are unix milliseconds. `spec` is the source as configured (JSON), header values
-- included: it is read by the poll job only, never shown.
CREATE TABLE pipeline_sources (
    pipeline_id          TEXT   PRIMARY KEY REFERENCES pipelines (id) ON DELETE CASCADE,
    spec                 TEXT   NOT NULL,
    updated_at           BIGINT NOT NULL,   -- ticks before this are not run
    cursor               TEXT,              -- value passed to the next poll
    cursor_tick          BIGINT,            -- the tick that saved it: later ticks only overwrite
    runs                 BIGINT NOT NULL DEFAULT 0,
    failures             BIGINT NOT NULL DEFAULT 0,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    events_total         BIGINT NOT NULL DEFAULT 0,
    last_tick            BIGINT,
    last_run_at          BIGINT,
    last_ok_at           BIGINT,
    last_events          BIGINT,
    last_error           TEXT
);
