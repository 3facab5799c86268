//! First start on an empty embedded database: development credentials and the banner
//! that prints them. Used by `serve`; on its own so the server does not depend on the
//! command-line module.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context as _;

use crate::auth::{issue_api_key, ApiKey};
use crate::store::{Project, Tenant, WebhookStore};

/// On the first start of an empty database, creates a `development` tenant, a
/// `default` project and an API key, and returns a banner to print with everything a
/// newcomer needs to make a first call. Returns `None` when the database already holds
/// anything, so restarts print nothing and never mint extra keys.
///
/// Meant for the embedded database ([`crate::config::DatabaseArgs::is_embedded`]): a shared
/// PostgreSQL database is provisioned by its operator, and two processes starting on
/// it at once could both find it empty.
pub async fn bootstrap_dev_credentials(
    store: &dyn WebhookStore,
    listen: &str,
) -> anyhow::Result<Option<String>> {
    if !store
        .is_empty()
        .await
        .context("cannot inspect the database")?
    {
        return Ok(None);
    }
    let tenant = store
        .create_tenant("development")
        .await
        .context("cannot create the development tenant")?;
    let project = store
        .create_project(tenant.id, "default")
        .await
        .context("cannot create the development project")?;
    let (key, _) = issue_api_key(store, project.id)
        .await
        .context("cannot create the development API key")?;
    Ok(Some(dev_banner(&tenant, &project, &key, listen)))
}

fn dev_banner(tenant: &Tenant, project: &Project, key: &ApiKey, listen: &str) -> String {
    let rule = "=".repeat(78);
    let base = api_base_url(listen);
    format!(
        "{rule}\n\
         First start on an empty database: created development credentials.\n\n\
         \x20 tenant   {tenant_id}  (development)\n\
         \x20 project  {project_id}  (default)\n\
         \x20 API key  {key}\n\n\
         The key is shown only this once; only a hash of it is stored.\n\
         Try it:\n\n\
         \x20 curl -s -H \"Authorization: Bearer {key}\" {base}/api/v1/webhooks\n\n\
         More keys: sonzai-webhooks keys create --project {project_id}\n\
         {rule}\n",
        tenant_id = tenant.id,
        project_id = project.id,
        key = key.expose(),
    )
}

/// The URL a local client should use to reach a server listening on `listen`. A
/// wildcard address is not something one can connect to, so it becomes loopback.
fn api_base_url(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(addr) => {
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("http://{}", SocketAddr::new(ip, addr.port()))
        }
        Err(_) => format!("http://{listen}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authenticate;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn bootstrap_creates_working_credentials_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/boot.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();

        let banner = bootstrap_dev_credentials(&store, "0.0.0.0:8080")
            .await
            .unwrap()
            .expect("an empty database gets credentials");
        let tenants = store.list_tenants().await.unwrap();
        assert_eq!(tenants.len(), 1);
        assert_eq!(tenants[0].name, "development");
        let projects = store.list_projects(Some(tenants[0].id)).await.unwrap();
        assert_eq!(projects.len(), 1);
        assert_eq!(projects[0].name, "default");
        assert!(banner.contains(&tenants[0].id.to_string()), "{banner}");
        assert!(banner.contains(&projects[0].id.to_string()), "{banner}");

        // The banner's curl line carries a key that really authenticates.
        let marker = "curl -s -H \"Authorization: ";
        let start = banner.find(marker).expect("curl line") + marker.len();
        let header = &banner[start..start + banner[start..].find('"').unwrap()];
        let caller = authenticate(&store, Some(header)).await.unwrap();
        assert_eq!(caller.project_id, projects[0].id);
        assert_eq!(caller.tenant_id, tenants[0].id);
        assert!(
            banner.contains(" http://127.0.0.1:8080/api/v1/webhooks\n"),
            "{banner}"
        );

        // A second start finds data and does nothing.
        assert_eq!(
            bootstrap_dev_credentials(&store, "0.0.0.0:8080")
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.list_tenants().await.unwrap().len(), 1);
        assert_eq!(store.list_api_keys(None).await.unwrap().len(), 1);
    }

    #[test]
    fn base_url_points_at_a_connectable_address() {
        assert_eq!(api_base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(api_base_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(api_base_url("[::]:9000"), "http://[::1]:9000");
        assert_eq!(api_base_url("10.1.2.3:80"), "http://10.1.2.3:80");
        assert_eq!(api_base_url("localhost:8080"), "http://localhost:8080");
    }
}
