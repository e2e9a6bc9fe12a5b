-- Endpoint settings of the inbox webhook that rules already carry in their JSON: whether the
-- receiver's certificate is checked (flags as 0/1 BIGINT, like webhook_enabled).
ALTER TABLE inboxes ADD COLUMN webhook_verify_tls BIGINT NOT NULL DEFAULT 1;

-- Why the inbox webhook was switched off by the dispatcher (410 Gone, failing too long);
-- cleared when the webhook is set again.
ALTER TABLE inboxes ADD COLUMN webhook_disabled_reason TEXT;

-- Endpoints failing without a success since `failing_since`: one row per endpoint and URL
-- (a new URL starts afresh), removed by the next success or when the endpoint is disabled.
CREATE TABLE endpoint_failures (
    inbox_id TEXT NOT NULL,
    endpoint_ref TEXT NOT NULL,
    url TEXT NOT NULL,
    failing_since BIGINT NOT NULL,
    PRIMARY KEY (inbox_id, endpoint_ref, url)
);

-- Per-thread ordering: an endpoint with `ordered` gets one thread's events in acceptance order.
-- Jobs carry their thread and whether their endpoint was ordered when they were made.
ALTER TABLE inboxes ADD COLUMN webhook_ordered BIGINT NOT NULL DEFAULT 0;

ALTER TABLE deliveries ADD COLUMN thread_id TEXT;

ALTER TABLE deliveries ADD COLUMN ordered BIGINT NOT NULL DEFAULT 0;

CREATE INDEX deliveries_thread ON deliveries (inbox_id, endpoint_ref, thread_id, status);
