-- Platform operators: admin tokens, DB token rotation, fleet migration results.

-- Platform admin tokens (`silo init`, `silo admin-token create`), stored as SHA-256 hashes.
CREATE TABLE admin_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    token_hash    BLOB NOT NULL UNIQUE,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at  INTEGER,
    revoked_at    INTEGER
) STRICT;

-- During a DB token rotation: the new token, sealed, stored *before* the file is re-keyed,
-- so a crash half-way always leaves a token on record that opens the file.
ALTER TABLE tenants ADD COLUMN db_token_next BLOB;

-- The last failed migration of a tenant (cleared when it succeeds).
CREATE TABLE migration_failures (
    tenant_id  TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    error      TEXT NOT NULL,
    at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
