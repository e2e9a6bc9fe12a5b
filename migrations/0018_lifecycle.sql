-- Data lifecycle: a retention period per inbox (days, fractions allowed, NULL for the
-- [retention] default), and the store check's lookup of a message by its object key.
ALTER TABLE inboxes ADD COLUMN retention_days DOUBLE PRECISION;

CREATE INDEX messages_storage_key ON messages (storage_key);
