-- How a pipeline's deliveries are verified when its provider is not Standard Webhooks: the
-- provider and its options as JSON (never a secret); NULL: Standard Webhooks with `secret`.
-- The provider's secret lives in its own columns, so `secret` stays a Standard Webhooks secret
-- that every release can read; the previous provider secret is accepted until its own expiry.
ALTER TABLE pipelines ADD COLUMN verify TEXT;
ALTER TABLE pipelines ADD COLUMN verify_secret TEXT;
ALTER TABLE pipelines ADD COLUMN previous_verify_secret TEXT;
ALTER TABLE pipelines ADD COLUMN previous_verify_expires_at BIGINT;
