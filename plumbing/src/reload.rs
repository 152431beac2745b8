//! A file of definitions reloaded while a service runs (the analyzer's alert rules, the processor's
//! windows): on SIGHUP, and whenever the file's content changes (checked every `interval`). A version
//! that the service refuses is logged with every problem and the running definitions stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Reload counters.
#[derive(Debug, Default)]
pub struct Reloads {
    /// New versions put in place after a change.
    pub applied: AtomicU64,
    /// Versions refused.
    pub refused: AtomicU64,
}

/// Watches `file` until `shutdown`. Each new version goes to `apply`, which puts it in place and says
/// what it did (for the log), or refuses it with the problems found. `what` names the definitions in
/// the log (`"alert rules"`, `"windows"`). Without a file, a SIGHUP is only logged (rather than ending
/// the process, as it would by default).
pub async fn watch(
    what: &'static str,
    file: Option<PathBuf>,
    interval: Duration,
    counters: Arc<Reloads>,
    shutdown: crate::Shutdown,
    mut apply: impl FnMut(&Path) -> Result<String, String>,
) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let Some(file) = file else {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = hangup.recv() => tracing::info!(what, "SIGHUP: no file to reload"),
            }
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the running definitions were read from: a change of content is what triggers a reload.
    let mut loaded = std::fs::read(&file).ok();
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => true,
            _ = tick.tick() => false,
        };
        let content = std::fs::read(&file).ok();
        if !forced && content == loaded {
            continue;
        }
        loaded = content;
        match apply(&file) {
            Ok(done) => {
                counters.applied.fetch_add(1, Ordering::SeqCst);
                tracing::info!(what, file = %file.display(), done, "reloaded");
            }
            Err(problems) => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                tracing::error!(what, file = %file.display(), %problems, "file refused; the running definitions stay");
            }
        }
    }
}
