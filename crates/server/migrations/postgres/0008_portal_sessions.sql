-- Portal sessions: a link's single-use token and, once it is used, the browser
-- session it became. Both are kept only as SHA-256 hashes, so a copy of the database
-- opens no portal. A session lasts until the link's expiry.
CREATE TABLE portal_sessions (
    id            uuid        NOT NULL PRIMARY KEY,
    project_id    uuid        NOT NULL REFERENCES projects (id),
    token_hash    bytea       NOT NULL UNIQUE,
    session_hash  bytea       UNIQUE,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    created_at    timestamptz NOT NULL
);

-- Expired sessions are deleted a few at a time when links are made.
CREATE INDEX portal_sessions_expiry ON portal_sessions (expires_at);
