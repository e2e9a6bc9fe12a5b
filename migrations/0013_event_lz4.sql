-- A message's event, LZ4-compressed (block format, its uncompressed length first), for writers
-- that compress it: event_json is then empty. The SQLite committer compresses. An event is
-- mostly the same text several times over (plain text, extracted text, prompt, thread prompt,
-- HTML), and uncompressed it took three overflow pages per message, written to the WAL, read
-- back and written again by every checkpoint. PostgreSQL compresses large text itself (TOAST),
-- so its rows keep event_json. Readers take whichever is set.
ALTER TABLE messages ADD COLUMN event_lz4 BYTEA;
