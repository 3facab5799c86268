//! Command output on stdout, shared by the commands (the admin ones, the remote ones
//! and the local receiver).

use std::io::Write as _;

use anyhow::Context as _;

/// Writes command output. A closed pipe (`... | head`) is not an error worth a
/// message: the reader has what it wanted.
pub(crate) fn write_stdout(output: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}
