-- Two-factor authentication, step-up, failed-login lockout and security events.

-- The TOTP secret, only as an AES-256-GCM envelope (like DB tokens). Set at enrolment;
-- 2FA is on once the enrolment is confirmed with a code.
ALTER TABLE users ADD COLUMN totp_secret BLOB;
ALTER TABLE users ADD COLUMN totp_enabled INTEGER NOT NULL DEFAULT 0;
-- The last TOTP time step accepted: a code is accepted once (RFC 6238 §5.2).
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;

-- When this session last proved a second factor (login with a code, or a step-up).
ALTER TABLE sessions ADD COLUMN verified_at INTEGER;

-- Owners can require 2FA of every member.
ALTER TABLE tenants ADD COLUMN require_2fa INTEGER NOT NULL DEFAULT 0;

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  BLOB NOT NULL,                             -- SHA-256 of the normalised code
    used_at    INTEGER,
    PRIMARY KEY (user_id, code_hash)
) STRICT;

-- Failed logins, per account ('email:…') and per client address ('ip:…'), for the soft
-- lockout. Rows older than the window are pruned as new ones arrive.
CREATE TABLE login_failures (
    key  TEXT NOT NULL,
    at   INTEGER NOT NULL                                 -- unix seconds
) STRICT;

CREATE INDEX login_failures_key_at ON login_failures (key, at);

-- Security-relevant events for a tenant's admins (lockouts, logins from new networks, …).
CREATE TABLE security_events (
    id         INTEGER PRIMARY KEY,
    tenant_id  TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    user_id    TEXT,
    kind       TEXT NOT NULL,
    ip         TEXT,
    detail     TEXT,                                      -- JSON; never a secret
    at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX security_events_tenant ON security_events (tenant_id, id);

-- Networks (/24 for IPv4, /64 for IPv6) each user has signed in from.
CREATE TABLE user_networks (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    network     TEXT NOT NULL,
    first_seen  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (user_id, network)
) STRICT;
