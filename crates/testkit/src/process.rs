//! The `sonzai-webhooks` binary as a child process: locate (or build) it, start
//! `serve` on a free loopback port, wait until it is ready, stop it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;

/// Name of the server binary in the target directory.
pub const SERVER_BIN: &str = "sonzai-webhooks";

/// Default bound of the wait for a started server to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of the wait for a killed process to be reaped.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts tried when another program takes the probed port first.
const PORT_ATTEMPTS: usize = 3;

/// The server binary of this build, `path` when given; it must exist.
///
/// Without `path` it is looked for next to the running executable and, for a test
/// binary in `target/<profile>/deps`, in `target/<profile>`.
pub fn locate_server_binary(path: Option<PathBuf>) -> Result<PathBuf, Error> {
    let path = match path {
        Some(path) => path,
        None => {
            let exe = std::env::current_exe()?;
            let dir = exe
                .parent()
                .ok_or("the running executable has no directory")?;
            let dir = if dir.file_name().is_some_and(|name| name == "deps") {
                dir.parent().unwrap_or(dir)
            } else {
                dir
            };
            dir.join(SERVER_BIN)
        }
    };
    if !path.is_file() {
        return Err(format!("server binary {} not found", path.display()).into());
    }
    Ok(path)
}

/// The `sonzai-webhooks` binary, (re)built once per test process: `cargo test` of one
/// package does not rebuild another package's binary, and a stale one would test old
/// code. Built in the profile of the running test binary.
pub fn server_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "-p", "sonzai-webhooks-server"]);
            build.args(["--bin", SERVER_BIN]);
            let exe = std::env::current_exe().expect("test executable");
            // target/<profile>/deps/<test>: build the same profile.
            let release = exe
                .ancestors()
                .nth(2)
                .and_then(Path::file_name)
                .is_some_and(|name| name == "release");
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building the server binary failed");
            locate_server_binary(None).expect("the server binary just built")
        })
        .clone()
}

/// A loopback port that was free a moment ago (bound and released; another program
/// can take it before the server binds it, which [`Spawn::start`] retries).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// How to start `serve`: the binary, arguments after `serve --listen <addr>`, extra
/// environment, where its output goes.
#[derive(Debug, Clone)]
pub struct Spawn {
    bin: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
    capture_stdout: bool,
    ready_timeout: Duration,
}

impl Spawn {
    pub fn new(bin: impl Into<PathBuf>) -> Spawn {
        Spawn {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            capture_stdout: false,
            ready_timeout: READY_TIMEOUT,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Spawn {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Spawn {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Spawn {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Writes stderr (the server's log) to this file instead of the test's stderr.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Spawn {
        self.log = Some(path.into());
        self
    }

    /// Keeps stdout for [`ServerProcess::stdout_line`] instead of discarding it.
    pub fn capture_stdout(mut self) -> Spawn {
        self.capture_stdout = true;
        self
    }

    pub fn ready_within(mut self, timeout: Duration) -> Spawn {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the process on a free loopback port and waits until `/readyz` answers.
    pub async fn start(&self) -> Result<ServerProcess, Error> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut process = self.spawn()?;
            match process.wait_ready(self.ready_timeout).await {
                Ok(()) => return Ok(process),
                Err(e) => {
                    process.stop_now().await;
                    let tail = process.log_tail(20);
                    // The port was taken between probing and binding: try another.
                    if tail.contains("Address already in use") {
                        last = Some(e);
                        continue;
                    }
                    if tail.is_empty() {
                        return Err(e);
                    }
                    return Err(format!("{e}; the server log ends with:\n{tail}").into());
                }
            }
        }
        Err(last.unwrap_or_else(|| "could not start the server".into()))
    }

    fn spawn(&self) -> Result<ServerProcess, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = command(&self.bin);
        command
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        match &self.log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                command.stderr(Stdio::from(file))
            }
            None => command.stderr(Stdio::inherit()),
        };
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        let pid = child.id().ok_or("the server exited at once")?;
        let (stdout, stdout_task) = match child.stdout.take() {
            Some(pipe) => {
                let (lines_tx, lines) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    let mut reader = BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        // Keep draining even when nobody listens any more, so the
                        // server never blocks on a full pipe.
                        let _ = lines_tx.send(line);
                    }
                });
                (Some(lines), Some(task))
            }
            None => (None, None),
        };
        Ok(ServerProcess {
            child,
            addr,
            pid,
            log: self.log.clone(),
            stdout,
            stdout_task,
        })
    }
}

/// A command for the server binary with an environment that cannot redirect it: a
/// developer's or CI's `DATABASE_URL`, `SONZAI_*` or `RUST_LOG` must not point it at
/// their data or change its output. Stdin is empty.
pub fn std_command(bin: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text == "DATABASE_URL" || text == "RUST_LOG" || text.starts_with("SONZAI_") {
            command.env_remove(&name);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// [`std_command`] for async use, killed when dropped.
pub fn command(bin: &Path) -> Command {
    let mut command = Command::from(std_command(bin));
    command.kill_on_drop(true);
    command
}

/// A running `sonzai-webhooks serve`; killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pid: u32,
    log: Option<PathBuf>,
    stdout: Option<mpsc::UnboundedReceiver<String>>,
    stdout_task: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until `/readyz` answers 2xx; fails when the process exits first or the
    /// time is up.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let http = crate::net::try_http_client(Duration::from_secs(2))?;
        let url = format!("{}/readyz", self.base_url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("the server exited during start-up ({status})").into());
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("server at {} not ready within {timeout:?}", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next line the server printed on stdout (with [`Spawn::capture_stdout`]),
    /// or `None` when there is none by `deadline`.
    pub async fn stdout_line(&mut self, deadline: tokio::time::Instant) -> Option<String> {
        let lines = self.stdout.as_mut()?;
        tokio::time::timeout_at(deadline, lines.recv()).await.ok()?
    }

    /// The last `lines` lines of the log file (with [`Spawn::log_to`]).
    pub fn log_tail(&self, lines: usize) -> String {
        self.log
            .as_deref()
            .map_or_else(String::new, |path| log_tail(path, lines))
    }

    /// SIGKILL: no chance to clean up. Waits (bounded) until the process is gone.
    pub async fn kill(&mut self) {
        self.stop_now().await;
    }

    /// SIGTERM and wait for the exit; returns how long it took.
    pub async fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
        started.elapsed()
    }

    /// Kills the process and waits (bounded) for it to be gone, so its database
    /// sessions close before the database is dropped.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(EXIT_TIMEOUT, self.child.wait()).await;
        if let Some(task) = self.stdout_task.take() {
            task.abort();
        }
    }
}

/// The last `lines` lines of a file, for error messages (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 20);
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
        assert_eq!(log_tail(&dir.path().join("missing"), 20), "");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let err = locate_server_binary(Some(PathBuf::from("/nonexistent/sonzai-webhooks")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sonzai-webhooks"), "{err}");
    }

    #[test]
    fn free_ports_are_loopback_ports_nobody_holds() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
    }

    #[tokio::test]
    async fn a_process_that_exits_during_start_up_is_reported() {
        // `true` ignores its arguments and exits at once: never ready.
        let spawn = Spawn::new("/bin/true").ready_within(Duration::from_secs(5));
        let err = spawn.start().await.err().expect("not ready").to_string();
        assert!(err.contains("exited during start-up"), "{err}");
    }
}
