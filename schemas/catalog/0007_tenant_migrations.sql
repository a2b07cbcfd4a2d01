-- Tenant migrations as first applied to any tenant: a file edited after that is drift.
-- (Each tenant database keeps only its version, in its header; an older silo kept this
-- per tenant, in a table inside the tenant's database.)
CREATE TABLE tenant_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
