//! The collector binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    plumbing::service::run("collector", |settings: collector::Settings, shutdown| async move {
        let app = collector::App::build(settings).await?;
        app.run(shutdown).await?;
        Ok(())
    })
}
