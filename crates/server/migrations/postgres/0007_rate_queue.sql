-- Where the queue of a rate-limited webhook's waiting deliveries ends: each delivery
-- that gets no send slot goes back due at the next turn after it, so they come due
-- about one interval apart instead of all at once.
ALTER TABLE webhooks ADD COLUMN rate_wait timestamptz;
