-- The inbox webhook's delivery settings that rule webhooks keep in their JSON
-- (`custom_headers`, `timeout_s`, `max_retries`), as one JSON object, NULL when none is set.
ALTER TABLE inboxes ADD COLUMN webhook_endpoint_json TEXT;
