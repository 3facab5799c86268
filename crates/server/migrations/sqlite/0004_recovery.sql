-- Recoveries: durable jobs that queue again the events a webhook did not get in a
-- window (see store/recovery.rs). A job is leased like a delivery, and each batch
-- moves its cursor (the last event looked at, in (created_at, id) order) in the same
-- transaction that queues the batch, so a job resumed by another process after a
-- crash neither skips nor repeats an event.
CREATE TABLE recoveries (
    id                BLOB    NOT NULL PRIMARY KEY,
    project_id        BLOB    NOT NULL REFERENCES projects (id),
    -- The webhook as it was when the recovery started: a webhook deleted (and perhaps
    -- re-created) since has another id, and the recovery ends.
    webhook_id        BLOB    NOT NULL,
    event_type        TEXT    NOT NULL,
    since             INTEGER NOT NULL,
    until             INTEGER NOT NULL,
    include_failed    INTEGER NOT NULL CHECK (include_failed IN (0, 1)),
    include_missed    INTEGER NOT NULL CHECK (include_missed IN (0, 1)),
    status            TEXT    NOT NULL CHECK (status IN ('running', 'done', 'cancelled')),
    matched           INTEGER NOT NULL,
    queued            INTEGER NOT NULL DEFAULT 0,
    cursor_at         INTEGER NOT NULL,
    cursor_id         BLOB    NOT NULL,
    lease_token       BLOB,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER
) STRICT;

-- The runners' claim: running jobs only.
CREATE INDEX recoveries_running ON recoveries (created_at) WHERE status = 'running';

-- A recovery walks the events of one (project, event type) in publish order.
CREATE INDEX events_type_time ON events (project_id, event_type, created_at, id);
