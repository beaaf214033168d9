-- Twin of migrations_pg/0011_arrival_profiles.sql: the hour-of-week arrival profile each
-- pool learned (hodei_core::pool_pass::ArrivalProfile, which the predictive policy reads),
-- kept whole as JSON under the pool's name so that a restart does not forget it. Not tied to
-- the pools table: a pool deleted and created again under its name finds its profile.
CREATE TABLE pool_arrival_profiles (
    pool          TEXT PRIMARY KEY,
    profile_json  TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
