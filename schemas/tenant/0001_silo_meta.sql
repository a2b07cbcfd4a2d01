-- silo's own facts about this tenant database (which tenant it belongs to, …).
-- Tenants can read tables named _silo_*; the sandbox refuses any change to them.
CREATE TABLE _silo_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
