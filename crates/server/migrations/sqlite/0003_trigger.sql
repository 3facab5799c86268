-- Why a delivery exists and why each attempt happened (shown as an attempt's
-- `trigger`). Existing deliveries all came from publishing. Attempts recorded before
-- this migration keep no trigger: guessing one would be invented history.
ALTER TABLE deliveries ADD COLUMN origin TEXT NOT NULL DEFAULT 'publish'
    CHECK (origin IN ('publish', 'resend', 'recover'));

ALTER TABLE attempts ADD COLUMN "trigger" TEXT
    CHECK ("trigger" IN ('publish', 'retry', 'resend', 'recover'));
