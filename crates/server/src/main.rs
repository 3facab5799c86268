//! The `sonzai-webhooks` binary: parses the command line, sets up logging, and runs
//! the chosen command on a multi-threaded runtime (for `serve`, as many threads as
//! `--runtime-threads` says).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use sonzai_webhooks_server::cli::{self, Cli};
use sonzai_webhooks_server::log_buffer;

fn main() -> ExitCode {
    // Usage errors and --help/--version exit here, with clap's own exit codes.
    let cli = Cli::parse();
    if let Err(err) = cli::init_tracing(&cli.log) {
        eprintln!("error: {err:#}");
        return ExitCode::from(2);
    }
    // Log lines logged on the runtime's threads are written when a thread runs out of
    // work; a panic's message comes after the lines before it.
    let panic_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log_buffer::flush();
        panic_hook(info);
    }));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .on_thread_unpark(log_buffer::mark_worker)
        .on_thread_park(log_buffer::flush);
    if let cli::Command::Serve(config) = &cli.command {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(config.runtime_threads_for(cpus));
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // The command has finished (serve included, after its own graceful shutdown);
    // don't let a stray background task keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    log_buffer::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::debug!(error = ?err, "command failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
