//! A three-node Kafka cluster for fault tests (replication factor 3, min.insync.replicas 2), run by
//! `deploy/kafka.sh cluster-*`, whose nodes a test stops, kills, pauses and restarts one at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plumbing::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;

/// Names a cluster that is already running (its bootstrap list); tests then use it and neither start nor
/// stop it, and cannot control its nodes.
pub const BROKERS_VAR: &str = "KAFKA_CLUSTER_BROKERS";

/// The number of nodes `deploy/kafka.sh` runs.
pub const NODES: u8 = 3;

/// How long one `kafka.sh` command may run. The script bounds its own waits (90 s for a node to answer,
/// 30 s for one to stop before SIGKILL), so this only catches a script that hangs.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// The cluster under test. Dropping it stops the cluster if this value started it.
#[derive(Debug)]
pub struct Cluster {
    brokers: String,
    /// Whether this value started the cluster with `kafka.sh`, and so may control and stop its nodes.
    owned: bool,
}

impl Cluster {
    /// The cluster named by `KAFKA_CLUSTER_BROKERS`, or else a fresh one started with
    /// `deploy/kafka.sh cluster-start` (fresh storage each time; about 15 s).
    pub fn start() -> Self {
        if let Some(brokers) = std::env::var(BROKERS_VAR).ok().filter(|b| !b.trim().is_empty()) {
            return Self { brokers, owned: false };
        }
        let started = Instant::now();
        let brokers = kafka_sh(&["cluster-start"]).trim().to_owned();
        eprintln!("e2e: kafka cluster {brokers} started in {:.1?}", started.elapsed());
        Self { brokers, owned: true }
    }

    /// The bootstrap list, `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn brokers(&self) -> String {
        self.brokers.clone()
    }

    /// Kafka settings that reach this cluster.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings { brokers: self.brokers.clone(), ..KafkaSettings::default() }
    }

    /// Whether `stop_node`, `kill_node` and `start_node` work: only on a cluster this harness started.
    pub fn controls_nodes(&self) -> bool {
        self.owned
    }

    /// Stops node `n` (1 to 3) with SIGTERM, a controlled shutdown, and waits until it has exited.
    pub fn stop_node(&self, n: u8) {
        self.node("node-stop", n);
    }

    /// Kills node `n` (1 to 3) with SIGKILL, as a crash would, and waits until it has gone.
    pub fn kill_node(&self, n: u8) {
        self.node("node-kill", n);
    }

    /// Starts node `n` (1 to 3) again on its storage and waits until it answers requests. It has not
    /// necessarily caught up yet: see `wait_for_isr`.
    pub fn start_node(&self, n: u8) {
        self.node("node-start", n);
    }

    /// Freezes node `n` (1 to 3) with SIGSTOP, as a long GC pause or a stalled VM would: it keeps its
    /// sockets and sessions but answers nothing, until `resume_node`. Stopping the cluster resumes it.
    pub fn pause_node(&self, n: u8) {
        self.node("node-pause", n);
    }

    /// Lets a paused node `n` continue (SIGCONT).
    pub fn resume_node(&self, n: u8) {
        self.node("node-resume", n);
    }

    /// What `kafka.sh cluster-status` says, one line per node (`kafka node 2 paused (pid ...)`, ...).
    pub fn status(&self) -> String {
        assert!(self.owned, "status: the cluster named by {BROKERS_VAR} ({}) is not the harness's", self.brokers);
        // 1 and 3 say that some or all nodes are down: an answer, not a failure.
        try_kafka_sh(&["cluster-status"], &[0, 1, 3]).unwrap_or_else(|err| panic!("{err}"))
    }

    fn node(&self, command: &str, n: u8) {
        assert!(
            self.owned,
            "{command} {n}: this test uses the cluster named by {BROKERS_VAR} ({}), whose nodes the harness does not \
             control; unset {BROKERS_VAR} to let the test start its own cluster with deploy/kafka.sh",
            self.brokers
        );
        assert!((1..=NODES).contains(&n), "{command} {n}: the cluster's nodes are 1 to {NODES}");
        let started = Instant::now();
        kafka_sh(&[command, &n.to_string()]);
        eprintln!("e2e: kafka.sh {command} {n} took {:.1?}", started.elapsed());
    }

    /// The leader and in-sync replicas of each partition of `topic`, as the brokers' metadata reports them
    /// (a leader of -1 means none).
    pub fn isr(&self, topic: &str) -> Result<BTreeMap<i32, (i32, Vec<i32>)>, KafkaError> {
        let consumer: BaseConsumer = self.kafka().consumer("e2e-isr", &crate::unique("e2e-isr")).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
            .map(|p| (p.id(), (p.leader(), p.isr().to_vec())))
            .collect())
    }

    /// Waits until every partition of `topic` has a leader and at least `replicas` in-sync replicas, for at
    /// most `limit`; panics on timeout with the last state seen.
    pub fn wait_for_isr(&self, topic: &str, replicas: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = String::from("nothing yet");
        while Instant::now() < deadline {
            match self.isr(topic) {
                Ok(partitions) => {
                    if !partitions.is_empty()
                        && partitions.values().all(|(leader, isr)| *leader >= 0 && isr.len() >= replicas)
                    {
                        return;
                    }
                    last = format!("{partitions:?} (partition: (leader, isr))");
                }
                Err(err) => last = format!("metadata request failed: {err}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{topic}: not every partition had {replicas} in-sync replicas within {limit:?}; last seen: {last}");
    }

    /// Stops the cluster now if this value started it, panicking if that fails (Drop only logs it).
    pub fn stop(mut self) {
        if std::mem::take(&mut self.owned) {
            kafka_sh(&["cluster-stop"]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            // No panic here: Drop also runs while a failed test unwinds, and a second panic would abort.
            if let Err(err) = try_kafka_sh(&["cluster-stop"], &[0]) {
                eprintln!("e2e: could not stop the kafka cluster: {err}");
            }
        }
    }
}

/// `deploy/kafka.sh` of this workspace.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka.sh")
}

/// Runs `deploy/kafka.sh args` and returns its stdout; panics with its stderr if it fails.
fn kafka_sh(args: &[&str]) -> String {
    try_kafka_sh(args, &[0]).unwrap_or_else(|err| panic!("{err}"))
}

/// Runs `deploy/kafka.sh args` for at most `SCRIPT_LIMIT`, returning its stdout if it exits with one of
/// `codes`, or else its stderr as the error.
fn try_kafka_sh(args: &[&str], codes: &[i32]) -> Result<String, String> {
    let command = format!("deploy/kafka.sh {}", args.join(" "));
    // Files rather than pipes: the script starts JVMs that outlive it, and a pipe they inherited by
    // mistake would never reach its end.
    let (out_path, err_path) = (crate::process::log_path("kafka-sh-out"), crate::process::log_path("kafka-sh-err"));
    let create = |path: &PathBuf| {
        std::fs::File::create(path).map_err(|err| format!("{command}: cannot create {}: {err}", path.display()))
    };
    let mut child = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?)
        .spawn()
        .map_err(|err| format!("{command}: cannot run it: {err}"))?;
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not finish within {SCRIPT_LIMIT:?} and was killed"));
            }
            Err(err) => break Err(format!("cannot wait for it: {err}")),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Ok(status) if status.code().is_some_and(|code| codes.contains(&code)) => {
            eprint!("{stderr}");
            Ok(stdout)
        }
        Ok(status) => Err(format!("{command} failed ({status}):\n{stderr}")),
        Err(why) => Err(format!("{command} {why}:\n{stderr}")),
    }
}
