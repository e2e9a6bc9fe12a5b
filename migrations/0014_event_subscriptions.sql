-- Event types and subscriptions (SPEC "Event types and subscriptions").

-- The event types the inbox webhook receives, as a JSON list of patterns (NULL is the default
-- `["mail.received", "calendar.*"]`, what every inbox webhook received before).
ALTER TABLE inboxes ADD COLUMN webhook_events TEXT;

-- The operational event (`delivery.dead`, `endpoint.disabled`) a delivery carries, about a
-- delivery of its message. NULL for every other delivery, which carries its message's event
-- (reduced to `mail.quarantined` when the message is quarantined).
ALTER TABLE deliveries ADD COLUMN delivery_event TEXT;
