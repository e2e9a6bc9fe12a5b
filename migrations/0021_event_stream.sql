-- The event stream's order (SPEC "Agents without a public URL"): a reconnect with Last-Event-ID
-- resumes after that event, so the order must be one every reader sees the same and that a
-- later commit never inserts into the middle of. SQLite has one writer at a time: the next
-- number of the inbox, taken in the inserting transaction, is commit order. On PostgreSQL it
-- is the inserting transaction's id (txid_current()), and a reader takes only rows below its
-- snapshot's xmin, every transaction under which has ended, so nothing can commit before what
-- it has already read. Messages from before this migration are 0, in id order.
ALTER TABLE messages ADD COLUMN stream_seq BIGINT NOT NULL DEFAULT 0;

CREATE INDEX messages_inbox_stream ON messages (inbox_id, stream_seq, id);

CREATE INDEX messages_stream_seq ON messages (stream_seq);
