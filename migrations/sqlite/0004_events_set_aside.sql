-- Events the store refused for what they hold (their batch failed on its data, not on the
-- connection or a lock): kept here byte for byte with the store's error, so that one event can
-- never stop its partition, and nothing acknowledged is dropped silently. Ids and payloads are
-- bytes: whatever the events table refused, this table takes.
CREATE TABLE events_set_aside (
    pipeline_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    event_time_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    error TEXT NOT NULL,
    set_aside_at_ms INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, event_id)
);
CREATE INDEX events_set_aside_by_time ON events_set_aside (set_aside_at_ms);
ALTER TABLE pipelines ADD COLUMN set_aside_count INTEGER NOT NULL DEFAULT 0;
