-- Claiming takes a share from each project with due work (see claim_due_skipping),
-- so one project's backlog never queues another project's fresh events behind it:
-- this index finds the projects with pending deliveries and each one's oldest due.
CREATE INDEX deliveries_project_due
    ON deliveries (project_id, next_attempt_at, id)
    WHERE status = 'pending';
