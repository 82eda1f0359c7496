-- How long a pipeline keeps its events, in milliseconds; NULL: the node default (DASH_RETENTION).
ALTER TABLE pipelines ADD COLUMN retention_ms BIGINT;
