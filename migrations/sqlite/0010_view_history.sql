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
