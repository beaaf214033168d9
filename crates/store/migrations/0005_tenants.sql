-- Tenants: weight and quotas, kept as JSON (hodei_core::tenancy::Tenant) so that new
-- quota kinds need no migration.
CREATE TABLE tenants (
    name          TEXT PRIMARY KEY NOT NULL,
    tenant_json   TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
