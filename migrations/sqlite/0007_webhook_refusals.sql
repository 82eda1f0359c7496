-- Deliveries refused for their credentials, per pipeline, minute and reason (missing_signature,
-- bad_signature, stale_timestamp, bad_token): what a pipeline's API stats and page show ("12
-- deliveries refused in the last hour: bad signature"). Times are unix ms; kept 2 days (at most 4 rows a pipeline a minute).
CREATE TABLE webhook_refusals (
    pipeline_id TEXT   NOT NULL,
    minute      BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    refused     BIGINT NOT NULL,
    last_at     BIGINT NOT NULL,
    PRIMARY KEY (pipeline_id, minute, reason)
);
