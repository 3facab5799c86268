-- Recoveries: durable jobs that queue again the events a webhook did not get in a
-- window (see store/recovery.rs). A job is leased like a delivery, and each batch
-- moves its cursor (the last event looked at, in (created_at, id) order) in the same
-- transaction that queues the batch, so a job resumed by another process after a
-- crash neither skips nor repeats an event.
CREATE TABLE recoveries (
    id                uuid        NOT NULL PRIMARY KEY,
    project_id        uuid        NOT NULL REFERENCES projects (id),
    -- The webhook as it was when the recovery started: a webhook deleted (and perhaps
    -- re-created) since has another id, and the recovery ends.
    webhook_id        uuid        NOT NULL,
    event_type        text COLLATE "C" NOT NULL,
    since             timestamptz NOT NULL,
    until             timestamptz NOT NULL,
    include_failed    boolean     NOT NULL,
    include_missed    boolean     NOT NULL,
    status            text        NOT NULL CHECK (status IN ('running', 'done', 'cancelled')),
    matched           bigint      NOT NULL,
    queued            bigint      NOT NULL DEFAULT 0,
    cursor_at         timestamptz NOT NULL,
    cursor_id         uuid        NOT NULL,
    lease_token       uuid,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    finished_at       timestamptz
);

-- The runners' claim: running jobs only.
CREATE INDEX recoveries_running ON recoveries (created_at) WHERE status = 'running';

-- A recovery walks the events of one (project, event type) in publish order.
CREATE INDEX events_type_time ON events (project_id, event_type, created_at, id);
