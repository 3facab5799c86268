-- Initial schema for the embedded SQLite backend.
--
-- Conventions (the Rust side converts consistently):
--   * ids are UUIDs stored as 16-byte BLOBs (compact, and they compare bytewise like
--     PostgreSQL's uuid, so keyset paging orders the same on both backends);
--   * instants are INTEGER microseconds since the Unix epoch, UTC: sortable, exact, and
--     the same precision as PostgreSQL's timestamptz;
--   * booleans are INTEGER 0/1.
-- STRICT tables make SQLite reject a value of the wrong type instead of storing it.

CREATE TABLE tenants (
    id          BLOB    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE projects (
    id          BLOB    NOT NULL PRIMARY KEY,
    tenant_id   BLOB    NOT NULL REFERENCES tenants (id),
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX projects_tenant ON projects (tenant_id);

CREATE TABLE api_keys (
    id          BLOB    NOT NULL PRIMARY KEY,
    project_id  BLOB    NOT NULL REFERENCES projects (id),
    -- Public part of the key; every authenticated request looks it up.
    lookup_id   TEXT    NOT NULL UNIQUE,
    secret_hash TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;

CREATE INDEX api_keys_project ON api_keys (project_id);

CREATE TABLE webhooks (
    id                          BLOB    NOT NULL PRIMARY KEY,
    project_id                  BLOB    NOT NULL REFERENCES projects (id),
    event_type                  TEXT    NOT NULL,
    webhook_url                 TEXT    NOT NULL,
    auth_header                 TEXT,
    signing_secret              TEXT    NOT NULL,
    -- The secret replaced by the last rotation, still signing until the instant below.
    previous_secret             TEXT,
    previous_secret_expires_at  INTEGER,
    is_active                   INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    -- Failure streak across events; decides automatic disabling.
    consecutive_failures        INTEGER NOT NULL DEFAULT 0,
    first_failure_at            INTEGER,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL,
    -- One webhook per (project, event type): the API addresses webhooks this way, and
    -- upsert relies on this constraint for its atomicity.
    UNIQUE (project_id, event_type)
) STRICT;

CREATE TABLE events (
    id               BLOB    NOT NULL PRIMARY KEY,
    project_id       BLOB    NOT NULL REFERENCES projects (id),
    event_type       TEXT    NOT NULL,
    -- The serialized JSON exactly as published; it is sent byte for byte.
    data             TEXT    NOT NULL,
    -- Cleared when a newer event reuses a key whose retention window has passed.
    idempotency_key  TEXT,
    created_at       INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX events_idempotency
    ON events (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Deliveries are small, hot rows looked up by id on every claim and outcome, hence
-- WITHOUT ROWID (the table is the primary key's B-tree).
CREATE TABLE deliveries (
    id               BLOB    NOT NULL PRIMARY KEY,
    event_id         BLOB    NOT NULL REFERENCES events (id),
    -- Deliberately not a foreign key: deliveries are history that outlives the
    -- webhook, and a dangling id is inert because claiming joins active webhooks.
    webhook_id       BLOB    NOT NULL,
    project_id       BLOB    NOT NULL,
    event_type       TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts_made    INTEGER NOT NULL DEFAULT 0,
    -- When the delivery may next be claimed. A claim moves it to the lease expiry, so
    -- "due" is this column alone and the claim scan never wades through in-flight rows.
    next_attempt_at  INTEGER NOT NULL,
    lease_token      BLOB,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- The work queue: only pending rows, in claim order.
CREATE INDEX deliveries_due
    ON deliveries (next_attempt_at, id)
    WHERE status = 'pending';

-- Cancelling a deleted or disabled webhook's pending deliveries.
CREATE INDEX deliveries_webhook_pending
    ON deliveries (webhook_id)
    WHERE status = 'pending';

CREATE INDEX deliveries_event ON deliveries (event_id);

CREATE TABLE attempts (
    id              BLOB    NOT NULL PRIMARY KEY,
    delivery_id     BLOB    NOT NULL REFERENCES deliveries (id),
    event_id        BLOB    NOT NULL,
    -- Copied from the delivery so that listing needs no join and survives the
    -- deletion of the webhook.
    project_id      BLOB    NOT NULL,
    event_type      TEXT    NOT NULL,
    webhook_url     TEXT    NOT NULL,
    response_code   INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    attempt_number  INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('success', 'failed')),
    request_body    BLOB    NOT NULL,
    response_body   TEXT,
    error_message   TEXT,
    created_at      INTEGER NOT NULL
) STRICT;

-- The attempts listing: newest first within (project, event type), keyset-friendly.
CREATE INDEX attempts_listing
    ON attempts (project_id, event_type, created_at DESC, id DESC);

CREATE INDEX attempts_delivery ON attempts (delivery_id);
