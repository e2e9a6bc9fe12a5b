-- PostgreSQL only. The columns below hold LZ4 the gateway compressed (migrations 0013 and 0016).
-- With the default storage (EXTENDED) PostgreSQL ran pglz over such a value whenever its row
-- passed about 2 KB, found it incompressible and stored the original out of line anyway: CPU
-- spent for nothing on the one server every node shares (BENCHMARKS.md). EXTERNAL stores the
-- value out of line as it is, without the attempt. Rows already written stay as they are.
ALTER TABLE messages ALTER COLUMN event_lz4 SET STORAGE EXTERNAL;

ALTER TABLE delivery_attempts ALTER COLUMN request_body SET STORAGE EXTERNAL;
