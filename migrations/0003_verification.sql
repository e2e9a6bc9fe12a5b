-- Verification state shared by every node: fingerprints for duplicate detection and the rate
-- limit buckets. TEXT and BIGINT only, like 0001.
CREATE TABLE message_fingerprints (
    inbox_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE INDEX message_fingerprints_lookup ON message_fingerprints (inbox_id, fingerprint, received_at);

CREATE TABLE rate_buckets (
    bucket TEXT PRIMARY KEY,
    level_milli BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
