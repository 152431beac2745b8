//! The store binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

fn main() -> ExitCode {
    plumbing::service::run("store", |settings: store::Settings, shutdown| async move {
        store::App::build(settings).await?.run(shutdown).await?;
        Ok(())
    })
}
