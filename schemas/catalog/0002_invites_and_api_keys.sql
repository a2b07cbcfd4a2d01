-- Invitations to join a tenant, and API keys for programs.

CREATE TABLE invites (
    token_hash   BLOB PRIMARY KEY NOT NULL,               -- SHA-256 of the invite token
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email        TEXT NOT NULL,                           -- normalised to lower case
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    invited_by   TEXT REFERENCES users (id) ON DELETE SET NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at   INTEGER NOT NULL,                        -- unix seconds
    accepted_at  INTEGER                                  -- single use
) STRICT;

CREATE INDEX invites_tenant ON invites (tenant_id);

-- A key acts for the user who made it, in that user's tenant, never beyond that user's
-- current role, and only within its scopes.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,                   -- the 8 characters after "silo_"
    key_hash      BLOB NOT NULL,                          -- SHA-256 of the whole key
    scopes        TEXT NOT NULL,                          -- space-separated
    allowed_ips   TEXT,                                   -- JSON array of CIDRs; NULL: anywhere
    expires_at    INTEGER,                                -- unix seconds; NULL: never
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at  INTEGER,
    revoked_at    INTEGER
) STRICT;

CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
