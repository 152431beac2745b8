//! The processor binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    plumbing::service::run("processor", |settings: processor::Settings, shutdown| async move {
        processor::App::build(settings).await?.run(shutdown).await?;
        Ok(())
    })
}
