-- The audit log: append-only (the triggers refuse UPDATE and DELETE) and tamper-evident
-- (each chain of events is hash-chained, and its head is MAC'd and kept outside this table).
-- A chain is one tenant's events, or the platform's (tenant_id NULL).

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY,
    tenant_id   TEXT,                                     -- NULL: platform event
    seq         INTEGER NOT NULL,                         -- 1, 2, … within its chain
    at          TEXT NOT NULL,                            -- RFC 3339 UTC
    actor       TEXT NOT NULL,                            -- user:<id>, api_key:<id>, admin:<id>, system, anonymous
    action      TEXT NOT NULL,                            -- noun.verb, e.g. auth.login
    target      TEXT,
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    before      TEXT,                                     -- JSON; never a secret
    after       TEXT,                                     -- JSON; never a secret
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
) STRICT;

CREATE UNIQUE INDEX audit_events_chain ON audit_events (coalesce(tenant_id, ''), seq);
CREATE INDEX audit_events_tenant_action ON audit_events (tenant_id, action, id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- The head of each chain, signed (HMAC-SHA256 under a key derived from the master key), so
-- that cutting off the newest events, or dropping the triggers and rewriting rows, shows.
CREATE TABLE audit_heads (
    chain       TEXT PRIMARY KEY NOT NULL,                -- tenant id, or '' for the platform
    seq         INTEGER NOT NULL,
    hash        BLOB NOT NULL,
    mac         BLOB NOT NULL,
    mac_key_id  TEXT NOT NULL
) STRICT;

-- Security events are now read from the audit log.
DROP TABLE security_events;
