//! The common body of every service binary: parse arguments, load settings (exit code 64 naming the bad
//! key), start telemetry, run the service until SIGTERM and give it the drain timeout to stop, exit 0 on a clean stop and 1 on a failure.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::Shutdown;
use crate::config::ServiceSettings;

/// sysexits.h: the configuration was wrong.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
struct Args {
    /// A TOML settings file; environment variables `RUNNEL_<SERVICE>__SECTION__KEY` override it.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs the service `name` with `serve`, which gets the validated settings and the shutdown token.
pub fn run<T, F, Fut>(name: &'static str, serve: F) -> ExitCode
where
    T: ServiceSettings,
    F: FnOnce(T, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = Args::parse_from(std::env::args_os());
    let settings: T = match crate::config::load(name, args.config.as_deref(), std::env::vars()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.print_config {
        return match toml::to_string_pretty(&settings) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{name}: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let _telemetry = crate::telemetry::init(name, settings.telemetry())?;
        let shutdown = crate::shutdown::on_signal()?;
        let drain_timeout = settings.ops().drain_timeout;
        crate::ops::drain_within(serve(settings, shutdown.clone()), &shutdown, drain_timeout).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            ExitCode::FAILURE
        }
    }
}
