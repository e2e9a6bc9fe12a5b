-- Data lifecycle: a retention period per inbox (days, fractions allowed, NULL for the
-- [retention] default), and the store check's lookup of a message by its object key.
ALTER TABLE inboxes ADD COLUMN retention_days DOUBLE PRECISION;

CREATE INDEX messages_storage_key ON messages (storage_key);

-- Threads that lost messages to an erasure or to retention: their later emails' thread
-- history says that older emails are not shown.
CREATE TABLE thread_removals (
    inbox_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    removed_at BIGINT NOT NULL,
    PRIMARY KEY (inbox_id, thread_id)
);

-- Keys of the gateway's own: `attachment_urls` signs the attachment download URLs in events
-- (never a webhook secret). After a rotation the previous key still verifies.
CREATE TABLE gateway_keys (
    name TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    rotated_at BIGINT NOT NULL
);

-- Inboxes being erased whole in the background (DELETE /v1/inboxes/{id}?purge=true): the
-- inbox stays, disabled, until its last message is gone, and its GET shows the progress.
CREATE TABLE inbox_purges (
    inbox_id TEXT PRIMARY KEY,
    requested_at BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    removed BIGINT NOT NULL DEFAULT 0
);

-- Raw objects of erased messages not yet removed from the store: written in the erasure's
-- transaction, removed once the object is, so an object whose removal was cut short (a crash,
-- the store down) is removed by the next pruner run instead of staying behind.
CREATE TABLE erased_objects (
    storage_key TEXT PRIMARY KEY,
    erased_at BIGINT NOT NULL
);
