-- Views: aggregates of what is inside a pipeline's events, one state per view, group and
-- minute, written in the same transaction as the events they count. Times are unix ms.
CREATE TABLE views (
    pipeline_id      TEXT    NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    view_id          TEXT    NOT NULL,
    spec             TEXT    NOT NULL,              -- the definition, JSON
    generation       INTEGER NOT NULL DEFAULT 1,    -- rises when what the view holds changes
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    -- Computing the history (over the events kept when the view was made or changed): minutes
    -- before `backfill_through` are done, up to `backfill_until`; NULL `backfilled_at` while it runs.
    backfill_until   INTEGER,
    backfill_through INTEGER,
    backfill_events  INTEGER NOT NULL DEFAULT 0,
    backfill_total   INTEGER,
    backfilled_at    INTEGER,
    PRIMARY KEY (pipeline_id, view_id)
);

-- A view's groups so far (at most its max_groups; later values go to "(other)").
CREATE TABLE view_groups (
    pipeline_id TEXT NOT NULL,
    view_id     TEXT NOT NULL,
    grp         TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, view_id, grp)
) WITHOUT ROWID;

-- One mergeable state per view, minute and group.
CREATE TABLE view_minutes (
    pipeline_id TEXT    NOT NULL,
    view_id     TEXT    NOT NULL,
    minute      INTEGER NOT NULL,
    grp         TEXT    NOT NULL,
    state       BLOB    NOT NULL,
    PRIMARY KEY (pipeline_id, view_id, minute, grp)
) WITHOUT ROWID;

-- Rises with every change to a pipeline's views: a batch that sees another value than the one
-- it knows reads the definitions again.
ALTER TABLE pipelines ADD COLUMN views_version INTEGER NOT NULL DEFAULT 0;
