-- Why a delivery exists and why each attempt happened (shown as an attempt's
-- `trigger`). Existing deliveries all came from publishing. Attempts recorded before
-- this migration keep no trigger: guessing one would be invented history.
--
-- A constant default adds the column without rewriting the table. The checks are
-- NOT VALID because existing rows hold the default or NULL, both allowed: validating
-- them would scan the whole attempt history under the ALTER's exclusive lock.
ALTER TABLE deliveries ADD COLUMN origin text NOT NULL DEFAULT 'publish';
ALTER TABLE deliveries ADD CONSTRAINT deliveries_origin_check
    CHECK (origin IN ('publish', 'resend', 'recover')) NOT VALID;

ALTER TABLE attempts ADD COLUMN "trigger" text;
ALTER TABLE attempts ADD CONSTRAINT attempts_trigger_check
    CHECK ("trigger" IN ('publish', 'retry', 'resend', 'recover')) NOT VALID;
