-- One row per inbox and fingerprint. Two nodes that receive the same message at once both
-- looked the fingerprint up before either had committed it, so neither flagged a duplicate;
-- with a unique index the second commit conflicts and learns that it is the duplicate. The row
-- holds the newest occurrence, which the duplicate window is measured from, so older copies
-- are removed before the index is built.
DELETE FROM message_fingerprints WHERE EXISTS (
    SELECT 1 FROM message_fingerprints newer
    WHERE newer.inbox_id = message_fingerprints.inbox_id
      AND newer.fingerprint = message_fingerprints.fingerprint
      AND (newer.received_at > message_fingerprints.received_at
           OR (newer.received_at = message_fingerprints.received_at
               AND newer.message_id > message_fingerprints.message_id))
);

-- The unique index answers the same lookups.
DROP INDEX message_fingerprints_lookup;

CREATE UNIQUE INDEX message_fingerprints_unique ON message_fingerprints (inbox_id, fingerprint);
