-- No planner statistics on deliveries.status. The mix of statuses in a work queue
-- changes faster than autovacuum samples it: a sample taken while nothing was pending
-- tells the planner the pending rows are gone, and it then plans every claim as if the
-- queue held one row, sorting the whole due backlog per claim and, for an ordered
-- webhook, per delivery. Without statistics the planner assumes the generic equality
-- selectivity, which keeps it on the ordered partial indexes whatever the queue holds.
-- Re-declaring the type (unchanged, no rewrite) drops statistics gathered before.
ALTER TABLE deliveries
    ALTER COLUMN status SET STATISTICS 0,
    ALTER COLUMN status TYPE text;
