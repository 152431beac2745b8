//! The store binary: load settings, start telemetry, run until SIGTERM.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Fault tests set FAILPOINTS (e.g. `store::before_publish=return(300)`); unset, no point is active.
    let failpoints = fail::FailScenario::setup();
    let code = plumbing::service::run("store", |settings: store::Settings, shutdown| async move {
        store::App::build(settings).await?.run(shutdown).await?;
        Ok(())
    });
    failpoints.teardown();
    code
}
