-- Event types and subscriptions (SPEC "Event types and subscriptions").

-- The event types the inbox webhook receives, as a JSON list of patterns; NULL is the default
-- `["mail.received", "calendar.*"]`, what every inbox webhook received before.
ALTER TABLE inboxes ADD COLUMN webhook_events TEXT;

-- The event a delivery carries when it is not its message's: the reduced `mail.quarantined`
-- event of a quarantined mail, or an operational event (`delivery.dead`, `endpoint.disabled`)
-- about a delivery of that message. NULL for every other delivery, which carries its
-- message's event.
ALTER TABLE deliveries ADD COLUMN delivery_event TEXT;
