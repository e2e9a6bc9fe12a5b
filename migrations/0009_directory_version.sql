-- A counter that every change to `inboxes` or `inbox_addresses` increments in its own
-- transaction. Each node polls it and reloads its RCPT directory when it moved, so a change made
-- through one node reaches the others. A counter, not MAX(updated_at): timestamps come from each
-- node's clock and a transaction may commit after a later one, so a maximum can miss a change.
CREATE TABLE directory_version (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);

INSERT INTO directory_version (id, version) VALUES (1, 0);
