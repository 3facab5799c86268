//! Test harness for the reference server, on top of `sonzai-webhooks-testkit`:
//! databases (a fresh SQLite file, or a fresh schema on the PostgreSQL named by
//! `TEST_DATABASE_URL`) that open as stores, a server started in this process on
//! `127.0.0.1:0` with a tenant, project and key, the generated client pointed at it,
//! the server binary as a process with test settings, and ([`harness`]) the contract
//! harness that checks every answer against `openapi.json`.

#![allow(dead_code)]

pub mod harness;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sonzai_webhooks_client::Client;
use sonzai_webhooks_server::config::{Config, DatabaseArgs};
use sonzai_webhooks_server::server::{start_with_store, Running};
use sonzai_webhooks_server::store::WebhookStore;
use sonzai_webhooks_testkit as kit;
use uuid::Uuid;

pub use kit::{
    free_port, http_client, poll_until, server_binary, Answer, Backend, Received, Receiver,
};

/// A database for one test (see [`kit::TestDb`]) that opens as a store.
pub struct TestDb(kit::TestDb);

impl Deref for TestDb {
    type Target = kit::TestDb;

    fn deref(&self) -> &kit::TestDb {
        &self.0
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb(kit::TestDb::sqlite())
    }

    /// A fresh schema on the PostgreSQL of `TEST_DATABASE_URL`, or `None` (with a note
    /// on stderr) when it is not set.
    pub async fn postgres() -> Option<TestDb> {
        kit::TestDb::postgres().map(TestDb)
    }

    /// The store as the server opens it, with the API key cache in front.
    pub async fn open(&self) -> Arc<dyn WebhookStore> {
        DatabaseArgs {
            database_url: Some(self.url.clone()),
            ..DatabaseArgs::default()
        }
        .connect()
        .await
        .expect("open store")
    }
}

/// The backends a test should run on: SQLite always, PostgreSQL when configured.
pub async fn backends() -> Vec<TestDb> {
    kit::backends().into_iter().map(TestDb).collect()
}

/// Settings for servers under test: private targets allowed (receivers are on
/// loopback), a fast retry schedule, short timeouts.
pub fn test_config(db: &TestDb) -> Config {
    let mut config = Config::for_tests(db.url.clone());
    config.allow_private_targets = true;
    config
}

/// A tenant with one project and one API key.
pub struct Tenant {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub key: String,
}

pub async fn create_tenant(store: &dyn WebhookStore, name: &str) -> Tenant {
    let tenant = store.create_tenant(name).await.expect("tenant");
    let project = store
        .create_project(tenant.id, "default")
        .await
        .expect("project");
    let (key, _) = sonzai_webhooks_server::auth::issue_api_key(store, project.id)
        .await
        .expect("key");
    Tenant {
        tenant_id: tenant.id,
        project_id: project.id,
        key: key.expose().to_owned(),
    }
}

/// A server running in this process on a loopback port, with one tenant.
pub struct TestServer {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub store: Arc<dyn WebhookStore>,
    pub tenant: Tenant,
    pub client: Client,
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(db, test_config(db)).await
    }

    pub async fn start_with(db: &TestDb, config: Config) -> TestServer {
        let store = db.open().await;
        let tenant = create_tenant(store.as_ref(), "tenant-a").await;
        let running = start_with_store(&config, store.clone())
            .await
            .expect("start server");
        let addr = running.addr;
        let client = client_for(addr, &tenant.key);
        TestServer {
            running: Some(running),
            addr,
            store,
            tenant,
            client,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn client_for(&self, key: &str) -> Client {
        client_for(self.addr, key)
    }

    /// Plain HTTP, for what the typed client cannot send.
    pub fn http(&self) -> reqwest::Client {
        http_client()
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

pub fn client_for(addr: SocketAddr, key: &str) -> Client {
    Client::with_api_key(&format!("http://{addr}/api/v1"), key).expect("client")
}

/// A `sonzai-webhooks serve` process on a loopback port (see [`kit::ServerProcess`]).
pub struct ServerProcess(kit::ServerProcess);

impl Deref for ServerProcess {
    type Target = kit::ServerProcess;

    fn deref(&self) -> &kit::ServerProcess {
        &self.0
    }
}

impl DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut kit::ServerProcess {
        &mut self.0
    }
}

impl ServerProcess {
    /// Starts `serve` on `db` with test settings plus `extra` arguments, and waits until
    /// `/readyz` answers.
    pub async fn start(db: &TestDb, data_dir: &std::path::Path, extra: &[&str]) -> ServerProcess {
        let timing = [
            "--retry-schedule",
            "100ms,200ms,400ms,800ms",
            "--lease",
            "3s",
            "--delivery-timeout",
            "2s",
            "--shutdown-grace",
            "2s",
        ];
        let args: Vec<&str> = timing.iter().chain(extra).copied().collect();
        Self::start_with_args(db, data_dir, &args).await
    }

    /// Starts `serve` on `db` with only the loopback essentials (listen address,
    /// database, data dir, private targets allowed) plus `args`, for tests that need
    /// timings other than [`ServerProcess::start`]'s (the CLI refuses a flag given
    /// twice), and waits until `/readyz` answers.
    pub async fn start_with_args(
        db: &TestDb,
        data_dir: &std::path::Path,
        args: &[&str],
    ) -> ServerProcess {
        let process = kit::Spawn::new(server_binary())
            .args(["--database-url", &db.url])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--allow-private-targets", "true"])
            .args(args)
            .env("SONZAI_LOG", "warn")
            .ready_within(Duration::from_secs(30))
            .start()
            .await
            .unwrap_or_else(|e| panic!("start the server: {e}"));
        ServerProcess(process)
    }
}
