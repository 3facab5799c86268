//! End-to-end tests of the admin commands: the real binary (built by
//! [`support::server_binary`]), a real SQLite file in a
//! temporary data directory, and the library's authentication against what the
//! binary wrote.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonzai_webhooks_server::auth::{authenticate, AuthError};
use sonzai_webhooks_server::store;
use sonzai_webhooks_testkit::process;

use crate::support;

/// No admin command should take anywhere near this long; it only stops a hung
/// process from hanging the test run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct Run {
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

/// Runs the binary with an environment cleared of every setting it reads, so that the
/// developer's or CI's environment (DATABASE_URL in particular) cannot redirect it.
pub(super) fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = process::std_command(&support::server_binary());
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn sonzai-webhooks");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sonzai-webhooks") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sonzai-webhooks {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().unwrap().unwrap(),
        stderr: err_reader.join().unwrap().unwrap(),
    }
}

/// Runs an admin command against `data_dir` and returns its JSON output.
fn json(data_dir: &Path, args: &[&str]) -> Value {
    let dir = data_dir.to_str().unwrap();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--data-dir", dir]);
    let run = run(&full, &[]);
    assert_eq!(
        run.code,
        Some(0),
        "{full:?} failed\nstdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("{full:?} printed invalid JSON ({err}): {}", run.stdout))
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {value}"))
        .to_owned()
}

#[tokio::test]
async fn tenants_projects_and_keys_round_trip() {
    let temp = tempfile::tempdir().unwrap();
    // A data directory that does not exist yet: the first command creates it.
    let data_dir = temp.path().join("state");

    let tenant = json(&data_dir, &["tenants", "create", "--name", "acme"]);
    let tenant_id = text(&tenant, "id");
    assert_eq!(text(&tenant, "name"), "acme");
    assert!(data_dir.join("sonzai-webhooks.db").is_file());

    let tenants = json(&data_dir, &["tenants", "list"]);
    let listed: Vec<String> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| text(t, "id"))
        .collect();
    assert_eq!(listed, vec![tenant_id.clone()]);

    let project = json(
        &data_dir,
        &[
            "projects",
            "create",
            "--tenant",
            &tenant_id,
            "--name",
            "production",
        ],
    );
    let project_id = text(&project, "id");
    assert_eq!(text(&project, "tenant_id"), tenant_id);
    assert_eq!(text(&project, "name"), "production");

    let projects = json(&data_dir, &["projects", "list", "--tenant", &tenant_id]);
    assert_eq!(projects.as_array().unwrap().len(), 1);
    assert_eq!(text(&projects[0], "id"), project_id);

    let created = json(&data_dir, &["keys", "create", "--project", &project_id]);
    let key = text(&created, "key");
    let key_id = text(&created, "id");
    let lookup_id = text(&created, "lookup_id");
    assert_eq!(text(&created, "project_id"), project_id);
    assert_eq!(text(&created, "tenant_id"), tenant_id);
    assert_eq!(key.len(), 56, "{key}");
    assert!(key.starts_with(&format!("sk_{lookup_id}_")), "{key}");
    let secret = &key[16..];

    let keys = json(&data_dir, &["keys", "list", "--project", &project_id]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(text(&keys[0], "id"), key_id);
    assert_eq!(text(&keys[0], "prefix"), format!("sk_{lookup_id}_"));
    assert!(keys[0]["revoked_at"].is_null(), "{keys}");
    assert!(
        !keys.to_string().contains(secret),
        "listing leaks the secret"
    );

    // The human-readable listing: a table with the prefix, never the secret.
    let dir = data_dir.to_str().unwrap();
    let table = run(&["keys", "list", "--data-dir", dir], &[]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.starts_with("ID "), "{}", table.stdout);
    assert!(table.stdout.contains("KEY PREFIX"), "{}", table.stdout);
    assert!(table.stdout.contains(&format!("sk_{lookup_id}_")));
    assert!(!table.stdout.contains(secret));
    assert!(!table.stderr.contains(secret));

    // What the binary stored authenticates through the library.
    let url = format!("sqlite://{}/sonzai-webhooks.db", data_dir.display());
    let header = format!("Bearer {key}");
    {
        let store = store::connect(&url).await.unwrap();
        let caller = authenticate(store.as_ref(), Some(&header)).await.unwrap();
        assert_eq!(caller.project_id.to_string(), project_id);
        assert_eq!(caller.tenant_id.to_string(), tenant_id);
        assert_eq!(caller.key_id.to_string(), key_id);
    }

    let revoked = json(&data_dir, &["keys", "revoke", &key_id]);
    assert_eq!(text(&revoked, "id"), key_id);
    assert_eq!(revoked["revoked"], Value::Bool(true));

    let keys = json(&data_dir, &["keys", "list"]);
    assert!(keys[0]["revoked_at"].is_string(), "{keys}");

    let store = store::connect(&url).await.unwrap();
    assert!(matches!(
        authenticate(store.as_ref(), Some(&header)).await,
        Err(AuthError::Revoked)
    ));
}

#[test]
fn human_output_guides_the_next_step() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();

    let empty = run(&["tenants", "list", "--data-dir", dir], &[]);
    assert_eq!(empty.code, Some(0), "{}", empty.stderr);
    assert!(empty.stdout.contains("tenants create"), "{}", empty.stdout);

    let tenant = run(
        &["tenants", "create", "--name", "acme", "--data-dir", dir],
        &[],
    );
    assert_eq!(tenant.code, Some(0), "{}", tenant.stderr);
    assert!(
        tenant.stdout.contains("projects create --tenant "),
        "{}",
        tenant.stdout
    );

    let tenant_id = json(temp.path(), &["tenants", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let project = run(
        &[
            "projects",
            "create",
            "--tenant",
            &tenant_id,
            "--name",
            "p",
            "--data-dir",
            dir,
        ],
        &[],
    );
    assert_eq!(project.code, Some(0), "{}", project.stderr);
    let project_id = json(temp.path(), &["projects", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let key = run(
        &[
            "keys",
            "create",
            "--project",
            &project_id,
            "--data-dir",
            dir,
        ],
        &[],
    );
    assert_eq!(key.code, Some(0), "{}", key.stderr);
    assert!(
        key.stdout.contains("cannot be shown again"),
        "{}",
        key.stdout
    );
    assert!(
        key.stdout.contains("Authorization: Bearer sk_"),
        "{}",
        key.stdout
    );
}

#[test]
fn environment_variables_select_the_database() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();
    let created = run(
        &["tenants", "create", "--name", "from-env", "--json"],
        &[("SONZAI_DATA_DIR", dir)],
    );
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    assert!(temp.path().join("sonzai-webhooks.db").is_file());

    // DATABASE_URL wins over the data directory.
    let elsewhere = temp.path().join("explicit.db");
    let url = format!("sqlite://{}", elsewhere.display());
    let other = run(
        &["tenants", "list", "--json", "--data-dir", dir],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(other.code, Some(0), "{}", other.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&other.stdout).unwrap(),
        Value::Array(vec![])
    );
    assert!(elsewhere.is_file());
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();
    let nil = "00000000-0000-0000-0000-000000000000";

    let project = run(
        &[
            "projects",
            "create",
            "--tenant",
            nil,
            "--name",
            "p",
            "--data-dir",
            dir,
        ],
        &[],
    );
    assert_eq!(project.code, Some(1));
    assert!(
        project.stderr.contains("does not exist"),
        "{}",
        project.stderr
    );

    let key = run(
        &["keys", "create", "--project", nil, "--data-dir", dir],
        &[],
    );
    assert_eq!(key.code, Some(1));
    assert!(key.stderr.contains("does not exist"), "{}", key.stderr);

    let revoke = run(&["keys", "revoke", nil, "--data-dir", dir], &[]);
    assert_eq!(revoke.code, Some(1));
    assert!(
        revoke.stderr.contains("does not exist"),
        "{}",
        revoke.stderr
    );

    // Usage errors are clap's: exit code 2 and the offending flag named.
    let workers = run(&["serve"], &[("SONZAI_WORKERS", "0")]);
    assert_eq!(workers.code, Some(2));
    assert!(workers.stderr.contains("--workers"), "{}", workers.stderr);

    // Inconsistent settings stop serve before it opens anything.
    let lease = run(
        &[
            "serve",
            "--lease",
            "5s",
            "--delivery-timeout",
            "10s",
            "--data-dir",
            dir,
        ],
        &[],
    );
    assert_eq!(lease.code, Some(1));
    assert!(lease.stderr.contains("--lease (5s)"), "{}", lease.stderr);

    let filter = run(
        &["tenants", "list", "--data-dir", dir],
        &[("SONZAI_LOG", "[")],
    );
    assert_eq!(filter.code, Some(2));
    assert!(
        filter.stderr.contains("invalid log filter"),
        "{}",
        filter.stderr
    );
}

#[test]
fn help_and_version_work() {
    let help = run(&["--help"], &[]);
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.contains("Quick start"), "{}", help.stdout);
    let keys = run(&["keys", "create", "--help"], &[]);
    assert_eq!(keys.code, Some(0));
    assert!(keys.stdout.contains("--project"), "{}", keys.stdout);
    assert!(keys.stdout.contains("DATABASE_URL"), "{}", keys.stdout);
    let version = run(&["--version"], &[]);
    assert_eq!(version.code, Some(0));
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );
}
