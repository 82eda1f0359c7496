-- An event's type where it is not its payload's own top-level "type": a provider's header
-- (X-GitHub-Event, X-Shopify-Topic, X-Gitlab-Event) or a member deeper in the body (Slack's
-- /event/type). NULL: the payload's "type", if any, is the event's type. Views read it as $type.
ALTER TABLE events ADD COLUMN event_type TEXT;
