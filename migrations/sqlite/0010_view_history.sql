-- A view's history is counted a bounded step at a time, without holding the writer while it
-- reads events (see dash-store's view_history.rs).
--
-- Every batch takes the next number of event_batches and its events carry it. Rows from before
-- this release have none: they were all committed before any view made from now on.
ALTER TABLE events ADD COLUMN batch_seq INTEGER;
CREATE TABLE event_batches (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO event_batches (id, seq) VALUES (1, 0);

-- history_cut: the last batch committed when the view was made or last changed; its history is
-- the events of that batch and those before. history_mark_key: the last event counted, in
-- event_id order. history_restart: a batch met a state it cannot read; the next history step
-- starts the view over.
ALTER TABLE views ADD COLUMN history_cut TEXT;
ALTER TABLE views ADD COLUMN history_mark_time INTEGER;
ALTER TABLE views ADD COLUMN history_mark_key TEXT;
ALTER TABLE views ADD COLUMN history_restart INTEGER NOT NULL DEFAULT 0;

-- A view whose history was being computed the old way, a minute at a time, starts over: its
-- states go, and its history is every event stored now.
DELETE FROM view_minutes WHERE (pipeline_id, view_id) IN
    (SELECT pipeline_id, view_id FROM views WHERE backfilled_at IS NULL);
DELETE FROM view_groups WHERE (pipeline_id, view_id) IN
    (SELECT pipeline_id, view_id FROM views WHERE backfilled_at IS NULL);
UPDATE pipelines SET views_version = views_version + 1
    WHERE id IN (SELECT pipeline_id FROM views WHERE backfilled_at IS NULL);
UPDATE views SET generation = generation + 1, backfill_until = NULL, backfill_through = NULL,
    backfill_events = 0, backfill_total = NULL, history_cut = '0'
    WHERE backfilled_at IS NULL;

-- Changes (to a random value) whenever a pipeline's views' groups change, so a batch knows the
-- groups it holds from an earlier batch are still the stored ones without reading them again.
ALTER TABLE pipelines ADD COLUMN groups_tag INTEGER NOT NULL DEFAULT 0;

-- state_key: where a view's states and groups are kept (their view_id column): the view's name
-- for views from before, a new key each time a view is made or starts over, so that deleting or
-- changing a view retires its old key in one row (view_states_retired) instead of deleting its
-- states while holding the writer; maintenance deletes retired states in steps.
ALTER TABLE views ADD COLUMN state_key TEXT;
UPDATE views SET state_key = view_id;
CREATE TABLE view_states_retired (
    pipeline_id TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    retired_at  INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, state_key)
) WITHOUT ROWID;
