-- Endpoint settings of the inbox webhook that rules already carry in their JSON: whether the
-- receiver's certificate is checked (flags as 0/1 BIGINT, like webhook_enabled).
ALTER TABLE inboxes ADD COLUMN webhook_verify_tls BIGINT NOT NULL DEFAULT 1;
