//! Shutdown: one cancellation token per process, cancelled by SIGTERM or SIGINT, handed to every task.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT.
///
/// Must be called from within a tokio runtime.
pub fn on_signal() -> std::io::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};

    let token = Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}
