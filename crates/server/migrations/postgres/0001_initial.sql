-- Initial schema for the PostgreSQL backend. Several server processes share it; the
-- migrator holds an advisory lock while applying this, so concurrent starts are safe.
--
-- event_type uses the "C" collation so that listing orders bytewise, exactly as the
-- SQLite backend does, whatever the database's default collation is.

CREATE TABLE tenants (
    id          uuid        NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE projects (
    id          uuid        NOT NULL PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE INDEX projects_tenant ON projects (tenant_id);

CREATE TABLE api_keys (
    id          uuid        NOT NULL PRIMARY KEY,
    project_id  uuid        NOT NULL REFERENCES projects (id),
    -- Public part of the key; every authenticated request looks it up.
    lookup_id   text        NOT NULL UNIQUE,
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE INDEX api_keys_project ON api_keys (project_id);

CREATE TABLE webhooks (
    id                          uuid        NOT NULL PRIMARY KEY,
    project_id                  uuid        NOT NULL REFERENCES projects (id),
    event_type                  text COLLATE "C" NOT NULL,
    webhook_url                 text        NOT NULL,
    auth_header                 text,
    signing_secret              text        NOT NULL,
    -- The secret replaced by the last rotation, still signing until the instant below.
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    is_active                   boolean     NOT NULL DEFAULT true,
    -- Failure streak across events; decides automatic disabling.
    consecutive_failures        bigint      NOT NULL DEFAULT 0,
    first_failure_at            timestamptz,
    created_at                  timestamptz NOT NULL,
    updated_at                  timestamptz NOT NULL,
    -- One webhook per (project, event type): the API addresses webhooks this way, and
    -- upsert's INSERT ... ON CONFLICT relies on it for atomicity.
    UNIQUE (project_id, event_type)
);

CREATE TABLE events (
    id               uuid        NOT NULL PRIMARY KEY,
    project_id       uuid        NOT NULL REFERENCES projects (id),
    event_type       text COLLATE "C" NOT NULL,
    -- The serialized JSON exactly as published (jsonb would reorder and reformat it,
    -- and it is sent byte for byte).
    data             text        NOT NULL,
    -- Cleared when a newer event reuses a key whose retention window has passed.
    idempotency_key  text,
    created_at       timestamptz NOT NULL
);

CREATE UNIQUE INDEX events_idempotency
    ON events (project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE deliveries (
    id               uuid        NOT NULL PRIMARY KEY,
    event_id         uuid        NOT NULL REFERENCES events (id),
    -- Deliberately not a foreign key: deliveries are history that outlives the
    -- webhook (no rewrite of every past delivery on delete), and a dangling id is
    -- inert because claiming joins active webhooks.
    webhook_id       uuid        NOT NULL,
    project_id       uuid        NOT NULL,
    event_type       text COLLATE "C" NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled')),
    attempts_made    bigint      NOT NULL DEFAULT 0,
    -- When the delivery may next be claimed. A claim moves it to the lease expiry, so
    -- "due" is this column alone and the claim scan never wades through in-flight rows.
    next_attempt_at  timestamptz NOT NULL,
    lease_token      uuid,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

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
    id              uuid        NOT NULL PRIMARY KEY,
    delivery_id     uuid        NOT NULL REFERENCES deliveries (id),
    event_id        uuid        NOT NULL,
    -- Copied from the delivery so that listing needs no join and survives the
    -- deletion of the webhook.
    project_id      uuid        NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    webhook_url     text        NOT NULL,
    response_code   bigint      NOT NULL,
    duration_ms     bigint      NOT NULL,
    attempt_number  bigint      NOT NULL,
    status          text        NOT NULL CHECK (status IN ('success', 'failed')),
    request_body    bytea       NOT NULL,
    response_body   text,
    error_message   text,
    created_at      timestamptz NOT NULL
);

-- The attempts listing: newest first within (project, event type), keyset-friendly.
CREATE INDEX attempts_listing
    ON attempts (project_id, event_type, created_at DESC, id DESC);

CREATE INDEX attempts_delivery ON attempts (delivery_id);
