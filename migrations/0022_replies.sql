-- Replies (issue 24): the messages an inbox sent are stored beside the ones it received, so a
-- thread holds both sides of the conversation. Rows from before this migration were received.
ALTER TABLE messages ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound';

-- The per-inbox send rate counts an inbox's outbound messages of the last hour.
CREATE INDEX messages_inbox_direction ON messages (inbox_id, direction, received_at);

-- One reply per Idempotency-Key and inbox: a retried request answers the reply the first one
-- made instead of sending again. The row is written before the reply is built and removed when
-- it could not be accepted, so a key names either a stored reply or one being made.
CREATE TABLE reply_requests (
    inbox_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (inbox_id, idempotency_key)
);
