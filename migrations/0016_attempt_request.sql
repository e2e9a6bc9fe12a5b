-- What a webhook attempt sent, so a user debugging their verifier can compare byte for byte.
-- request_meta: JSON {"headers": [[name, value], ...] in the order set (custom header values
-- replaced by "[hidden]"), "body": "event" | "stored" | "too_large", "body_bytes": n}.
-- request_body: the body, LZ4-compressed like messages.event_lz4, only when "stored": a body
-- that is the job's stored event (payload mxhook, the common case) is not stored twice, and one
-- over the cap is not stored at all. Both NULL for email forwards, attempts that sent nothing
-- and attempts made before this migration.
ALTER TABLE delivery_attempts ADD COLUMN request_meta TEXT;
ALTER TABLE delivery_attempts ADD COLUMN request_body BYTEA;
