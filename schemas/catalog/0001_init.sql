-- The control plane's catalog: tenants, people, sessions. Never tenant rows.
-- Times: *_at TEXT columns are RFC 3339 UTC for people; expiry columns are INTEGER
-- unix seconds, compared on every request.

CREATE TABLE tenants (
    id              TEXT PRIMARY KEY NOT NULL,            -- TenantId: 32 hex, server-generated
    name            TEXT NOT NULL,
    status          TEXT NOT NULL
        CHECK (status IN ('provisioning', 'active', 'suspended', 'deleting', 'deleted')),
    plan            TEXT NOT NULL DEFAULT 'free',
    placement       TEXT NOT NULL DEFAULT 'local',
    -- Identifies the database the DB token opens; bound into the token envelope's
    -- associated data, so an envelope copied to another row or database does not open.
    db_id           TEXT NOT NULL UNIQUE,
    -- The DB token, only ever as an AES-256-GCM envelope (silo_crypto::Keyring::seal).
    db_token        BLOB NOT NULL,
    schema_version  INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX tenants_status ON tenants (status);

CREATE TABLE users (
    id               TEXT PRIMARY KEY NOT NULL,
    email            TEXT NOT NULL UNIQUE,                -- normalised to lower case
    password_hash    TEXT NOT NULL,                       -- argon2id PHC string
    -- Bumped by a password change or "sign out everywhere": every session made under an
    -- older version stops working at once.
    session_version  INTEGER NOT NULL DEFAULT 1,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE memberships (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, user_id)
) STRICT;

CREATE INDEX memberships_user ON memberships (user_id);

-- One row per sign-in. The refresh tokens of a session form its family: reuse of a spent
-- one revokes the session.
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_version  INTEGER NOT NULL,                    -- users.session_version at sign-in
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at       INTEGER NOT NULL,                    -- unix seconds
    revoked_at       TEXT,
    revoked_reason   TEXT
) STRICT;

CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash  BLOB PRIMARY KEY NOT NULL,                -- SHA-256 of the token; never the token
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
) STRICT;

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
