-- A view's history is counted a bounded step at a time, without holding its pipeline's lock
-- while it reads events (see dash-store's view_history.rs).
--
-- Every event row names the transaction that wrote it. A nullable column without a default is
-- a change of the catalog alone, and a default set afterwards applies to new rows only, so
-- neither rewrites the events, on a hypertable as on a partitioned table. Rows from before this
-- release have none: they were all committed before any view made from now on. Releases before
-- this one name their columns when they write, so their rows are stamped by the default too.
-- The events table is made after the migrations on a new database (with the column, see
-- EVENTS_COLUMNS): only an existing one has it to alter.
DO $$
BEGIN
    IF to_regclass('events') IS NOT NULL THEN
        ALTER TABLE events ADD COLUMN IF NOT EXISTS batch_xid xid8;
        ALTER TABLE events ALTER COLUMN batch_xid SET DEFAULT pg_current_xact_id();
    END IF;
END $$;

-- history_cut: the snapshot taken, under the pipeline's lock, when the view was made or last
-- changed; its history is the events committed before it. history_mark_*: the last event
-- counted, in (event_time, event_id) order (its time in microseconds). history_restart: a batch met a state it cannot read;
-- the next history step starts the view over.
ALTER TABLE views
    ADD COLUMN history_cut       TEXT,
    ADD COLUMN history_mark_time BIGINT,
    ADD COLUMN history_mark_key  TEXT,
    ADD COLUMN history_restart   BOOLEAN NOT NULL DEFAULT FALSE;

-- A view whose history was being computed the old way, a minute at a time, starts over: its
-- states go, and its history is every event stored now.
DELETE FROM view_minutes m USING views v
    WHERE m.pipeline_id = v.pipeline_id AND m.view_id = v.view_id AND v.backfilled_at IS NULL;
DELETE FROM view_groups g USING views v
    WHERE g.pipeline_id = v.pipeline_id AND g.view_id = v.view_id AND v.backfilled_at IS NULL;
UPDATE views SET generation = generation + 1, backfill_until = NULL, backfill_through = NULL,
    backfill_events = 0, backfill_total = NULL, history_cut = pg_current_snapshot()::text
    WHERE backfilled_at IS NULL;
UPDATE pipelines SET views_version = views_version + 1
    WHERE id IN (SELECT pipeline_id FROM views WHERE backfilled_at IS NULL);

-- Changes (to a random value) whenever a pipeline's views' groups change, so a batch knows the
-- groups it holds from an earlier batch are still the stored ones without reading them again.
ALTER TABLE pipelines ADD COLUMN groups_tag BIGINT NOT NULL DEFAULT 0;

-- state_key: where a view's states and groups are kept (their view_id column): the view's name
-- for views from before, a new key each time a view is made or starts over, so that deleting or
-- changing a view retires its old key in one row (view_states_retired) instead of deleting its
-- states under the pipeline's lock; maintenance deletes retired states in steps.
ALTER TABLE views ADD COLUMN state_key TEXT COLLATE "C";
UPDATE views SET state_key = view_id;
ALTER TABLE views ALTER COLUMN state_key SET NOT NULL;
CREATE TABLE view_states_retired (
    pipeline_id TEXT COLLATE "C" NOT NULL,
    state_key   TEXT COLLATE "C" NOT NULL,
    retired_at  BIGINT NOT NULL,
    PRIMARY KEY (pipeline_id, state_key)
);
