-- Scheduled deletion with a grace period, and deletion certificates.

-- When a tenant in 'deleting' is destroyed (unix seconds).
ALTER TABLE tenants ADD COLUMN delete_after INTEGER;
ALTER TABLE tenants ADD COLUMN deletion_requested_at TEXT;

-- Outlives its tenant (no foreign key): whoever scheduled the deletion fetches the signed
-- certificate with the token they were given, once the deletion is complete.
CREATE TABLE deletion_certificates (
    token_hash   BLOB PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL,
    document     TEXT,                                    -- signed JSON, set on completion
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX deletion_certificates_tenant ON deletion_certificates (tenant_id);
