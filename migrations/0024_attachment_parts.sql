-- Streamed attachment downloads (issue 20): where each attachment's body lies in the raw
-- message and how it is encoded, as JSON written at intake (see src/parse/part.rs). NULL for
-- messages stored before this migration and for those with no attachment that streams, which
-- are served from the whole message as before.
ALTER TABLE messages ADD COLUMN attachment_parts TEXT;
