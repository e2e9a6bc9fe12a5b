-- The `hmac-sha256` scheme's settings for the inbox webhook (rules carry theirs in their JSON):
-- the header it signs in (NULL: X-Webhook-Signature) and the value format.
ALTER TABLE inboxes ADD COLUMN webhook_signature_header TEXT;

ALTER TABLE inboxes ADD COLUMN webhook_signature_format TEXT NOT NULL DEFAULT 'sha256=hex';
