-- Threading (issue 3): each message belongs to a thread, resolved at intake from In-Reply-To /
-- References against earlier messages of the same inbox, or from the normalised subject when a
-- mail carries no threading headers. Stored, so threads survive restarts and span nodes.
ALTER TABLE messages ADD COLUMN thread_id TEXT;

-- The subject with Re:/Fwd:/AW: prefixes stripped, lower-cased: the key of the subject fallback.
ALTER TABLE messages ADD COLUMN subject_key TEXT;

-- Lower-cased From, To and Cc addresses, space-separated: the fallback needs a shared participant.
ALTER TABLE messages ADD COLUMN participants TEXT;

-- Rows accepted before this migration each start a thread of their own.
UPDATE messages SET thread_id = 'thr_' || id WHERE thread_id IS NULL;

CREATE INDEX messages_inbox_header_id ON messages (inbox_id, header_message_id);

CREATE INDEX messages_inbox_thread ON messages (inbox_id, thread_id, received_at);

CREATE INDEX messages_inbox_subject ON messages (inbox_id, subject_key, received_at);
