//! Measured programs as child processes: Runnel's services (the binaries beside `runnel-bench`, or in
//! `--bin-dir`) and the peer engines. Each gets a log file holding its stdout and stderr; its CPU time
//! and resident memory come from Linux's accounting (/proc/<pid>), every thread counted (a JVM's
//! compiler and collector threads too).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plumbing::kafka::KafkaSettings;

use crate::unique;

/// A running child process. Dropping it kills the process.
pub(crate) struct Process {
    pub(crate) name: String,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`; the environment is this one's without `RUNNEL_*` (so a child gets
    /// exactly the defaults plus `env`), and `env` on top. Output goes to `<dir>/<name>.log`.
    pub(crate) fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)], dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RUNNEL_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    /// Fails if the process has exited, naming its log.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); see {}", self.name, self.log.display());
        }
        Ok(())
    }

    /// Waits until a line of the log is exactly `line`, for at most `limit`.
    pub(crate) async fn wait_for_line(&mut self, line: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.lines().any(|l| l.trim() == line) {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("{} did not print {line:?} within {limit:?}; see {}", self.name, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// User plus system CPU seconds of the process so far, every thread.
    pub(crate) fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Resident MiB now and at the peak.
    pub(crate) fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let mib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kib| kib / 1024.0)
        };
        (mib("VmRSS:"), mib("VmHWM:"))
    }

    /// SIGTERM, then up to 30 s to stop; a process that does not is killed and reported.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not stop within 30 s of SIGTERM; see {}", self.name, self.log.display())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process has been waited for already; this ends one an error left running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU seconds from a `/proc/<pid>/stat` file, every thread.
pub(crate) fn cpu_seconds(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3; utime and
    // stime are fields 14 and 15, in clock ticks of 1/100 s (USER_HZ on every Linux this runs on).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// The folder of Runnel's service binaries, once `main` has set it from `--bin-dir`.
pub(crate) static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The service binary `name`, which must exist.
pub(crate) fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let binary = BIN_DIR.get().context("the binaries' folder is not set")?.join(name);
    if !binary.exists() {
        bail!("{} is missing: deploy/bench.sh builds it beside runnel-bench", binary.display());
    }
    Ok(binary)
}

/// One HTTP client for every scrape: a client made per request costs milliseconds (its TLS roots),
/// which a run's clock would count.
static HTTP: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(reqwest::Client::new);

/// A service process and its ops address.
pub(crate) struct Service {
    pub(crate) process: Process,
    pub(crate) ops: SocketAddr,
}

impl Service {
    /// Starts the service `name` with the defaults, `env` on top, and its ops listener on a port of its own.
    pub(crate) fn spawn(name: &'static str, dir: &Path, kafka: &KafkaSettings, env: &[(String, String)]) -> anyhow::Result<Self> {
        let ops = free_addr()?;
        let mut vars = vec![("KAFKA_BROKERS".to_owned(), kafka.brokers.clone()), (format!("RUNNEL_{}__OPS__LISTEN", name.to_uppercase()), ops.to_string())];
        vars.extend_from_slice(env);
        let process = Process::spawn(&unique(name), &service_binary(name)?, &[], &vars, dir)?;
        Ok(Self { process, ops })
    }

    /// Waits for `/readyz` to answer 200.
    pub(crate) async fn ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            self.process.check_running()?;
            if HTTP.get(format!("http://{}/readyz", self.ops)).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            // Often: a run's clock starts at readiness.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("{} was not ready in 2 minutes; see {}", self.process.name, self.process.log.display())
    }

    pub(crate) fn cpu(&self) -> f64 {
        self.process.cpu()
    }

    /// The value of the sample `series` (name and labels exactly as exposed) on `/metrics`.
    pub(crate) async fn metric(&self, series: &str) -> Option<f64> {
        let text = HTTP.get(format!("http://{}/metrics", self.ops)).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub(crate) fn stop(self) -> anyhow::Result<()> {
        self.process.stop()
    }
}

/// A loopback address free a moment ago, for a listener whose port the bench must know in advance.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
