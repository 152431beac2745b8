//! Service binaries as child processes, for fault tests: each started with exactly the environment a
//! test gives it and a log file, then killed with SIGKILL, paused with SIGSTOP, resumed with SIGCONT or
//! stopped with SIGTERM; and `bin`, which finds (building it first) a binary of the workspace.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long `bin` lets cargo build one binary. The test binary itself was just built, so this is mostly
/// linking, but a cold target folder on a small machine can take minutes.
const BUILD_LIMIT: Duration = Duration::from_secs(900);
/// How long the kernel may take to end a process after SIGKILL before the harness gives up on it.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// How often a wait for a process polls it.
const POLL: Duration = Duration::from_millis(20);

/// A service binary running as a child process. Dropping it kills the process.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Starts `binary` with no arguments; see [`Service::spawn_with_args`].
    pub fn spawn(binary: &Path, env: &[(String, String)]) -> Self {
        Self::spawn_with_args(binary, &[], env)
    }

    /// Starts `binary` with `args`, its stdout and stderr going to one log file under the OS temp folder.
    ///
    /// The child inherits this process's environment except `RUNNEL_*` and `KAFKA_BROKERS`, which the test
    /// command may have set for in-process services and which would silently reconfigure the child; `env`
    /// is added on top, so the child's settings are exactly the defaults plus what the test passes.
    pub fn spawn_with_args(binary: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let name = binary.file_name().map_or_else(|| "service".to_owned(), |n| n.to_string_lossy().into_owned());
        let log = log_path(&name);
        let file = File::create(&log).unwrap_or_else(|err| panic!("cannot create the log file {}: {err}", log.display()));
        // Both streams share one open file description, so their lines interleave without overwriting.
        let stderr = file.try_clone().unwrap_or_else(|err| panic!("cannot share the log file {}: {err}", log.display()));
        let mut command = Command::new(binary);
        command.args(args).stdin(Stdio::null()).stdout(file).stderr(stderr);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("RUNNEL_") || key == plumbing::config::KAFKA_BROKERS_VAR {
                command.env_remove(key.as_ref());
            }
        }
        // Every service's ops listener on a free port, so that instances side by side never collide.
        command.env(format!("RUNNEL_{}__OPS__LISTEN", name.to_uppercase()), "127.0.0.1:0");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command.spawn().unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        Self { name, child, log }
    }

    /// The process id, as long as the process has not been waited for.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file holding the process's stdout and stderr. It is kept after the process ends.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(cannot read the log: {err})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every thread's stack of the running process, from gdb when it is installed: what a test prints
    /// when a service stopped making progress, so that a rare hang can be told apart from an idle loop.
    pub fn stacks(&self) -> String {
        let pid = self.child.id().to_string();
        let dump = Command::new("gdb")
            .args(["-p", &pid, "-batch", "-nx", "-ex", "set pagination off", "-ex", "thread apply all bt 30"])
            .stdin(Stdio::null())
            .output();
        match dump {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                // Only the frames: gdb's banner and symbol-loading chatter say nothing about the hang.
                text.lines().filter(|l| l.starts_with('#') || l.starts_with("Thread ")).collect::<Vec<_>>().join("\n")
            }
            Err(err) => format!("(no stacks: gdb did not run: {err})"),
        }
    }

    /// Waits until the log has a line containing `needle`, for at most `limit`, and returns the first such
    /// line; panics with the log's tail if none appears or the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(self.is_running(), "{} exited before logging {needle:?}:\n{}", self.name, self.log_tail(30));
            assert!(Instant::now() < deadline, "{} did not log {needle:?} within {limit:?}:\n{}", self.name, self.log_tail(30));
            std::thread::sleep(POLL);
        }
    }

    /// The address the process logged on its first line containing `needle` (as `addr=...`), waiting
    /// up to a minute for the line.
    pub fn logged_addr(&mut self, needle: &str) -> std::net::SocketAddr {
        let line = self.wait_for_log(needle, Duration::from_secs(60));
        line.split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Whether the process has not exited yet. A paused (SIGSTOP) process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(status) => status.is_none(),
            Err(err) => panic!("cannot query {} (pid {}): {err}", self.name, self.child.id()),
        }
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and waits until it is gone.
    /// Does nothing to a process that has already exited.
    pub fn kill(&mut self) -> ExitStatus {
        if self.is_running() {
            // Child::kill is SIGKILL on Unix.
            if let Err(err) = self.child.kill() {
                panic!("cannot kill {} (pid {}): {err}", self.name, self.child.id());
            }
        }
        match self.wait_until(Instant::now() + KILL_LIMIT) {
            Some(status) => status,
            None => panic!("{} (pid {}) still runs {KILL_LIMIT:?} after SIGKILL", self.name, self.child.id()),
        }
    }

    /// Freezes the process with SIGSTOP: it keeps its sockets and its Kafka sessions but does nothing,
    /// as a process stalled by a long GC pause or a stopped VM would, until `resume`.
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process continue (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
    }

    /// Asks the process to stop with SIGTERM and waits for it to exit, for at most `deadline`; panics with
    /// the tail of its log if it does not. A paused process is resumed too, so that it can see the signal.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        if self.is_running() {
            self.signal(Signal::SIGTERM);
            self.signal(Signal::SIGCONT);
        }
        self.wait(deadline)
    }

    /// Waits for the process to exit by itself, for at most `limit`; panics with the tail of its log if it
    /// does not.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        match self.wait_until(Instant::now() + limit) {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) did not exit within {limit:?}; the end of its log {}:\n{}",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_tail(30)
            ),
        }
    }

    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => return None,
                Err(err) => panic!("cannot wait for {} (pid {}): {err}", self.name, self.child.id()),
            }
        }
    }

    /// As `wait_until`, but never panics (for Drop).
    fn wait_until_quietly(&mut self, deadline: Instant) -> Option<ExitStatus> {
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends `signal`, but only to a process not yet waited for: until then its pid cannot have been reused
    /// by another process, even if it has exited (it is a zombie), so the signal cannot hit a stranger.
    fn signal(&mut self, signal: Signal) {
        if !self.is_running() {
            panic!("cannot send {signal} to {}: it has exited; the end of its log:\n{}", self.name, self.log_tail(30));
        }
        let pid = i32::try_from(self.child.id())
            .unwrap_or_else(|_| panic!("pid {} of {} does not fit a pid_t", self.child.id(), self.name));
        if let Err(err) = kill(Pid::from_raw(pid), signal) {
            panic!("cannot send {signal} to {} (pid {pid}): {err}", self.name);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // No panic here: Drop also runs while a failed test unwinds, and a second panic would abort.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            if self.wait_until_quietly(Instant::now() + KILL_LIMIT).is_none() {
                eprintln!("e2e: {} (pid {}) still runs after SIGKILL; leaving it", self.name, self.child.id());
            }
        }
    }
}

/// A fresh path for a log file named after `name`, in `runnel-e2e` under the OS temp folder.
pub(crate) fn log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("runnel-e2e");
    if let Err(err) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {err}", dir.display());
    }
    dir.join(format!("{}.log", crate::unique(name)))
}

/// The path of the workspace binary `name` (`collector`, `processor`, `store`, `analyzer` or `runnel`),
/// built by `cargo build` first.
///
/// The binary sits in the same target and profile folder as the running test (so `CARGO_TARGET_DIR` and
/// the profile are respected). `cargo test -p e2e` builds the services' libraries but not their
/// binaries, and a binary left from an earlier build may predate the code under test, so each binary is
/// built once per test process; when the code is unchanged cargo only checks that it is fresh.
///
/// The build takes every target of the workspace, as `cargo test --workspace` does: the same selection
/// resolves the dependencies' features alike, so their compiled units are reused. (Building one package
/// alone resolves fewer features and compiles half of the DataFusion chain a second time.)
pub fn bin(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let (dir, profile) = profile_dir();
    let path = dir.join(name);
    // Holding the lock during the build serialises concurrent callers, as cargo's own lock would.
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.contains(name) {
        build(name, &profile, &path);
        built.insert(name.to_owned());
    }
    path
}

/// The folder the running test binary was built into (`target/debug` for `target/debug/deps/harness-..`)
/// and its profile name.
fn profile_dir() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap_or_else(|err| panic!("cannot find the test binary: {err}"));
    let dir = exe
        .parent()
        .filter(|deps| deps.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("the test binary {} is not in a cargo target/<profile>/deps folder", exe.display()));
    let profile = match dir.file_name().map(|n| n.to_string_lossy().into_owned()) {
        // The dev profile's folder is named debug.
        Some(folder) if folder == "debug" => "dev".to_owned(),
        Some(folder) => folder,
        None => panic!("cannot tell the cargo profile of {}", exe.display()),
    };
    (dir.to_path_buf(), profile)
}

/// Builds the binary `name` of the workspace with cargo, in the same target folder and profile as the
/// running test, bounded by `BUILD_LIMIT`.
fn build(name: &str, profile: &str, path: &Path) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The cargo that built this test (CARGO is set when cargo compiles a crate), so that the toolchain is
    // the same; a plain `cargo` from PATH only if that is unknown.
    let cargo =
        std::env::var_os("CARGO").or_else(|| option_env!("CARGO").map(Into::into)).unwrap_or_else(|| "cargo".into());
    let target_dir = path.parent().and_then(Path::parent).unwrap_or(path);
    let args = ["build", "--profile", profile, "--workspace", "--all-targets"];
    // Straight to stderr rather than through eprintln!, which the test harness captures: a build can
    // take a while, and whoever waits should see why.
    let _ = writeln!(std::io::stderr().lock(), "e2e: building {name} unless it is fresh: cargo {}", args.join(" "));
    let log = log_path(&format!("cargo-build-{name}"));
    let file = File::create(&log).unwrap_or_else(|err| panic!("cannot create the log file {}: {err}", log.display()));
    let stderr = file.try_clone().unwrap_or_else(|err| panic!("cannot share the log file {}: {err}", log.display()));
    let spawned = Command::new(&cargo)
        .args(args)
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        // Without cargo (say, prebuilt test binaries run directly) a binary that exists is used as it is.
        Err(err) if path.exists() => {
            let _ = writeln!(std::io::stderr().lock(), "e2e: cannot run cargo ({err}); using {}", path.display());
            return;
        }
        Err(err) => panic!("cannot run cargo to build {name}: {err}; run `cargo build --workspace --all-targets` first"),
    };
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "building {name} took over {BUILD_LIMIT:?}; run `cargo build --workspace --all-targets` first (log {})",
                    log.display()
                );
            }
            Err(err) => panic!("cannot wait for cargo building {name}: {err}"),
        }
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = output.lines().collect();
        panic!(
            "building {name} failed ({status}); run `cargo build --workspace --all-targets` first; the end of its output:\n{}",
            tail[tail.len().saturating_sub(30)..].join("\n")
        );
    }
    if !path.exists() {
        panic!("cargo built {name} but {} does not exist; run `cargo build --workspace --all-targets` first", path.display());
    }
    let _ = std::fs::remove_file(&log);
}
