-- An event's type where it is not its payload's own top-level "type": a provider's header
-- (X-GitHub-Event, X-Shopify-Topic, X-Gitlab-Event) or a member deeper in the body (Slack's
-- /event/type). NULL: the payload's "type", if any, is the event's type. Views read it as $type.
--
-- The events table is made after the migrations on a new database (with the column, see
-- EVENTS_COLUMNS): only an existing one has it to alter. A nullable column without a default is
-- a change of the catalog alone, on a hypertable as on a partitioned table, whatever its size.
-- Releases before this one name their columns when they write, so they go on writing beside it.
DO $$
BEGIN
    IF to_regclass('events') IS NOT NULL THEN
        ALTER TABLE events ADD COLUMN IF NOT EXISTS event_type TEXT;
    END IF;
END $$;
