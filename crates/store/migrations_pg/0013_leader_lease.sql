-- The leader lease of server replicas (hodei_core::lease): one row per lease name, taken and
-- renewed by compare-and-set. `epoch` increases each time the lease changes hands; job writes
-- of a leader are fenced with it (refused once another epoch holds the lease).
-- `expires_ms` is on the database's clock, so replicas never compare their own clocks.
CREATE TABLE leader_lease (
    name       TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT NOT NULL,
    holder_url TEXT NOT NULL,
    epoch      BIGINT NOT NULL CHECK (epoch > 0),
    expires_ms BIGINT NOT NULL
);
