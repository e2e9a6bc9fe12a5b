-- Inboxes managed through the API: a display name, an enabled/disabled status, the previous
-- signing secret that stays valid for a grace period after rotation, and the notification rules.
ALTER TABLE inboxes ADD COLUMN name TEXT;

ALTER TABLE inboxes ADD COLUMN status TEXT NOT NULL DEFAULT 'enabled';

ALTER TABLE inboxes ADD COLUMN webhook_previous_secret TEXT;

ALTER TABLE inboxes ADD COLUMN webhook_previous_secret_expires_at BIGINT;

ALTER TABLE inboxes ADD COLUMN notifications_json TEXT;

-- Per-inbox API keys, stored as the SHA-256 of a 256-bit random key: the key itself is shown
-- once, at creation.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE,
    key_hash TEXT NOT NULL UNIQUE,
    name TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX api_keys_inbox ON api_keys (inbox_id);
