-- Server replicas that share this database (`GET /api/v1/cluster`): each one heartbeats its
-- row every `renew_interval`; `seen_ms` is on the database's clock, like the leader lease.
-- Members not seen for a few lease periods drop out of the listing, and their rows are
-- deleted a while later.
CREATE TABLE cluster_members (
    id      TEXT COLLATE "C" PRIMARY KEY,
    url     TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);
