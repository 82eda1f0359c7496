-- A view's states at coarser levels (dash-store's view_rollups.rs): minutes of all groups
-- together, hours and days of each group and of all together. Their states are kept in
-- view_minutes like the minutes', under the view's states key with the level's suffix
-- ('<key>@h', '<key>@d.all', ...), each at its bucket's start.
--
-- rolled_to: the level holds everything its source held before this instant (unix ms); a batch
-- that counts an event before it counts it into the level too. A level's bucket is complete
-- when it ends at or before rolled_to.
CREATE TABLE view_rollups (
    pipeline_id TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    level       TEXT NOT NULL,
    rolled_to   INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, state_key, level)
) WITHOUT ROWID;

-- One group's series (a card's top groups, the API's ?group=) reads along its group rather than
-- every group of every minute of the range.
CREATE INDEX view_minutes_by_group ON view_minutes (pipeline_id, view_id, grp, minute);
