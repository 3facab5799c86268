//! Serving the HTTP API and the delivery workers (wired up in a later change).

/// Runs the server until shutdown.
pub async fn serve(_config: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("not wired yet")
}
