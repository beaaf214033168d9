-- PostgreSQL twin of migrations/0005_tenants.sql. Tenants: weight and quotas, kept as JSON
-- (hodei_core::tenancy::Tenant) so that new quota kinds need no migration. The name is
-- `COLLATE "C"`: tenants are listed in byte order, as in SQLite.
CREATE TABLE tenants (
    name          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_json   TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
