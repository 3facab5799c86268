-- Operator events: when the webhook's last sonzai.delivery.exhausted was published,
-- and how many were held back since (reported by the next one).
ALTER TABLE webhooks ADD COLUMN exhausted_noticed_at timestamptz;
ALTER TABLE webhooks ADD COLUMN exhausted_suppressed bigint NOT NULL DEFAULT 0;
