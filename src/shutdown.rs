//! SIGINT / SIGTERM become one cancellation token.

use tokio_util::sync::CancellationToken;

/// Cancels `token` at the first SIGINT or SIGTERM.
pub fn on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new associations or requests"
        );
        token.cancel();
    });
    Ok(())
}
