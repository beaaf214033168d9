-- Twin of migrations_pg/0016_cluster_members.sql. The embedded SQLite store serves one
-- server, which never reads this table; it exists so that both stores keep the same layout.
CREATE TABLE cluster_members (
    id      TEXT PRIMARY KEY,
    url     TEXT NOT NULL,
    seen_ms INTEGER NOT NULL
);
