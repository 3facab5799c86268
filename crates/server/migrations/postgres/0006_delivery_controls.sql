-- Per-webhook delivery controls. rate_limit: deliveries per second across all
-- processes, paced by rate_next, the earliest instant the next one may be sent (the
-- theoretical arrival time of a generic cell rate algorithm). ordered: one delivery at
-- a time, in publish order, which is the order of event ids (UUIDv7 carrying the
-- publish time to the microsecond).
ALTER TABLE webhooks ADD COLUMN rate_limit bigint CHECK (rate_limit BETWEEN 1 AND 10000);
ALTER TABLE webhooks ADD COLUMN rate_next timestamptz;
ALTER TABLE webhooks ADD COLUMN ordered boolean NOT NULL DEFAULT false;

-- An ordered webhook's queue, head first; also what cancelling and counting a
-- webhook's pending deliveries read.
CREATE INDEX deliveries_webhook_queue
    ON deliveries (webhook_id, event_id, id)
    WHERE status = 'pending';
DROP INDEX deliveries_webhook_pending;
