-- One schema for SQLite and PostgreSQL: TEXT and BIGINT only, times in ms since the epoch,
-- flags as 0/1 BIGINT, so the same statements run on both.
CREATE TABLE inboxes (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    webhook_url TEXT,
    webhook_enabled BIGINT NOT NULL DEFAULT 1,
    webhook_secret TEXT,
    webhook_signature TEXT NOT NULL DEFAULT 'agentmail',
    webhook_payload TEXT NOT NULL DEFAULT 'mxhook',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE inbox_addresses (
    address TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL REFERENCES inboxes (id) ON DELETE CASCADE
);

CREATE INDEX inbox_addresses_inbox ON inbox_addresses (inbox_id);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    storage_bucket TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    envelope_from TEXT,
    envelope_to TEXT NOT NULL,
    remote_ip TEXT,
    helo TEXT,
    header_message_id TEXT,
    sender TEXT,
    subject TEXT,
    received_at BIGINT NOT NULL,
    event_json TEXT NOT NULL
);

CREATE INDEX messages_inbox_received ON messages (inbox_id, received_at);

CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id),
    inbox_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    endpoint_ref TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT,
    locked_by TEXT,
    last_status_code BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    delivered_at BIGINT
);

CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);

CREATE INDEX deliveries_inbox_status ON deliveries (inbox_id, status);

CREATE INDEX deliveries_message ON deliveries (message_id);

CREATE TABLE delivery_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    attempt BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    status_code BIGINT,
    outcome TEXT NOT NULL,
    error TEXT,
    response_excerpt TEXT
);

CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);
