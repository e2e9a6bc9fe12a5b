-- The per-inbox sender policy (required SPF/DKIM/DMARC passes, allow and block lists, and the
-- action: tag, reject or quarantine) as JSON on the inbox row, so inboxes created through the API
-- have one too and every node reads it with the directory. NULL: no policy.
ALTER TABLE inboxes ADD COLUMN sender_policy TEXT;

-- Whether the policy quarantined a message (stored, not delivered), so the API can list and
-- filter quarantined messages without reading every event.
ALTER TABLE messages ADD COLUMN quarantined BIGINT NOT NULL DEFAULT 0;

-- The first characters of a per-inbox key, shown when keys are listed so a user can tell them
-- apart (too short to use). NULL for keys made before it was recorded.
ALTER TABLE api_keys ADD COLUMN key_prefix TEXT;
