-- The serving processes and their heartbeats, so a node that died (kill -9, a lost machine) has
-- its delivery leases taken over within seconds instead of after delivery.lease_s. Each node
-- (on PostgreSQL: a SQLite database has one serving process, which releases all leases at start)
-- writes its row about every second, and another node that sees a row's heartbeat_at unchanged
-- for a few seconds of its own clock (no clock comparison between machines) releases the
-- leases held under that id and deletes the row. id is the node id the leases name
-- (deliveries.locked_by).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
