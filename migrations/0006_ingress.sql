-- Provider ingress: per-inbox secrets (write-only through the API, the previous one kept valid
-- for a grace period after rotation) and the provider event ids already processed (replays).
CREATE TABLE ingress_secrets (
    inbox_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_valid_until BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (inbox_id, provider)
);

CREATE TABLE ingress_seen (
    provider TEXT NOT NULL,
    event_key TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider, event_key)
);
