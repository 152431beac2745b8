//! The processor binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

fn main() -> ExitCode {
    plumbing::service::run("processor", |settings: processor::Settings, shutdown| async move {
        processor::App::build(settings).await?.run(shutdown).await?;
        Ok(())
    })
}
