//! The analyzer binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    plumbing::service::run("analyzer", |settings: analyzer::Settings, shutdown| async move {
        analyzer::App::build(settings).await?.run(shutdown).await?;
        Ok(())
    })
}
