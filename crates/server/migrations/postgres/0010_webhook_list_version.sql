-- A version of each project's webhook list, moved by every change a listing shows, so
-- a listing cached in a process's memory is served only while no process has changed
-- the list since. Triggers move it, whichever code path writes. It has a table of its
-- own, locked last in any transaction: upserts lock the project's row before the
-- webhook's and recorders lock webhooks only, so a version on the project's row would
-- let the two deadlock.
CREATE TABLE webhook_list_versions (
    project_id  uuid   NOT NULL PRIMARY KEY REFERENCES projects (id),
    version     bigint NOT NULL
);

INSERT INTO webhook_list_versions (project_id, version) SELECT id, 0 FROM projects;

CREATE FUNCTION webhook_list_version_of_project() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_list_versions (project_id, version) VALUES (NEW.id, 0);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_list_version_of_project AFTER INSERT ON projects
    FOR EACH ROW EXECUTE FUNCTION webhook_list_version_of_project();

CREATE FUNCTION webhook_list_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE webhook_list_versions SET version = version + 1
        WHERE project_id = OLD.project_id;
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.project_id <> OLD.project_id) THEN
        UPDATE webhook_list_versions SET version = version + 1
        WHERE project_id = NEW.project_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_list_version_insert_delete AFTER INSERT OR DELETE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION webhook_list_version_bump();

-- Only the columns a listing shows: the failure streak and the pacing columns change
-- with deliveries and leave the listing as it was.
CREATE TRIGGER webhook_list_version_update AFTER UPDATE ON webhooks
    FOR EACH ROW
    WHEN (OLD.project_id IS DISTINCT FROM NEW.project_id
       OR OLD.event_type IS DISTINCT FROM NEW.event_type
       OR OLD.webhook_url IS DISTINCT FROM NEW.webhook_url
       OR OLD.auth_header IS DISTINCT FROM NEW.auth_header
       OR OLD.is_active IS DISTINCT FROM NEW.is_active
       OR OLD.created_at IS DISTINCT FROM NEW.created_at
       OR OLD.updated_at IS DISTINCT FROM NEW.updated_at
       OR OLD.rate_limit IS DISTINCT FROM NEW.rate_limit
       OR OLD.ordered IS DISTINCT FROM NEW.ordered)
    EXECUTE FUNCTION webhook_list_version_bump();
