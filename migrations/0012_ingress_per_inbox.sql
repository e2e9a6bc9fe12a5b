-- Provider ingress per inbox in the database.
--
-- ingress_event_types: which inbox receives each calendar event type ("calcom:<id>",
-- "calendly:<event type URI>"). Set through the API (source 'api'), and seeded from the config
-- file's `calendar_event_types` at every start (source 'config'), so API-created inboxes can
-- receive bookings and every node sees the same mapping.
CREATE TABLE ingress_event_types (
    event_type TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX ingress_event_types_inbox ON ingress_event_types (inbox_id);

-- ingress_replays replaces ingress_seen: the inbox is part of the key, so one inbox's signed
-- requests cannot mark another inbox's event ids as seen, and rows are pruned by age.
-- Keys recorded before this migration had no inbox. They are kept under inbox '' (matched for
-- every inbox) until they age out, so an upgrade does not reopen a replay window.
CREATE TABLE ingress_replays (
    provider TEXT NOT NULL,
    inbox_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider, inbox_id, event_key)
);

CREATE INDEX ingress_replays_received_at ON ingress_replays (received_at);

INSERT INTO ingress_replays (provider, inbox_id, event_key, received_at)
    SELECT provider, '', event_key, received_at FROM ingress_seen;

DROP TABLE ingress_seen;
