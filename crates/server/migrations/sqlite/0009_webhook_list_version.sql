-- A version of each project's webhook list, moved by every change a listing shows, so
-- a listing cached in memory is served only while no process has changed the list
-- since. Triggers move it, whichever code path writes. It has a table of its own,
-- written last in any transaction, so it adds no lock order to the projects' rows.
CREATE TABLE webhook_list_versions (
    project_id  BLOB    NOT NULL PRIMARY KEY REFERENCES projects (id),
    version     INTEGER NOT NULL
) STRICT;

INSERT INTO webhook_list_versions (project_id, version) SELECT id, 0 FROM projects;

CREATE TRIGGER webhook_list_version_of_project AFTER INSERT ON projects
BEGIN
    INSERT INTO webhook_list_versions (project_id, version) VALUES (NEW.id, 0);
END;

CREATE TRIGGER webhook_list_version_insert AFTER INSERT ON webhooks
BEGIN
    UPDATE webhook_list_versions SET version = version + 1 WHERE project_id = NEW.project_id;
END;

CREATE TRIGGER webhook_list_version_delete AFTER DELETE ON webhooks
BEGIN
    UPDATE webhook_list_versions SET version = version + 1 WHERE project_id = OLD.project_id;
END;

-- Only the columns a listing shows: the failure streak and the pacing columns change
-- with deliveries and leave the listing as it was.
CREATE TRIGGER webhook_list_version_update AFTER UPDATE ON webhooks
WHEN OLD.project_id IS NOT NEW.project_id
  OR OLD.event_type IS NOT NEW.event_type
  OR OLD.webhook_url IS NOT NEW.webhook_url
  OR OLD.auth_header IS NOT NEW.auth_header
  OR OLD.is_active IS NOT NEW.is_active
  OR OLD.created_at IS NOT NEW.created_at
  OR OLD.updated_at IS NOT NEW.updated_at
  OR OLD.rate_limit IS NOT NEW.rate_limit
  OR OLD.ordered IS NOT NEW.ordered
BEGIN
    UPDATE webhook_list_versions SET version = version + 1
    WHERE project_id IN (OLD.project_id, NEW.project_id);
END;
