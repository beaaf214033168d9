-- Twin of migrations_pg/0013_leader_lease.sql. The embedded SQLite store serves one server,
-- which leads alone (epoch 1) and never reads this table; it exists so that both stores keep
-- the same layout.
CREATE TABLE leader_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    epoch      INTEGER NOT NULL CHECK (epoch > 0),
    expires_ms INTEGER NOT NULL
);
