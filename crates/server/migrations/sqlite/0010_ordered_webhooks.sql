-- The ordered webhooks, for the sweep that wakes a head left held out of the due
-- range (store/held.rs): one index probe per ordered webhook, however many webhooks
-- there are.
CREATE INDEX webhooks_ordered ON webhooks (id) WHERE ordered;
