//! The fault harness tested on itself: a three-node cluster keeps every acknowledged write through a node
//! crash and restart and lets a node be paused, the verifier sees only committed aggregates and names each
//! lost, duplicated, wrong and unexpected window, and service processes can be paused, resumed, killed and
//! stopped.
//!
//! The cluster tests share one cluster, started here unless `KAFKA_CLUSTER_BROKERS` names one, so they run
//! in sequence inside a single test that owns it: a static would never be dropped, and the cluster never
//! stopped.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::cluster::Cluster;
use e2e::oracle::{S, WINDOW};
use e2e::process::{Service, bin};
use e2e::verify::{Expected, FormulaData, Options, WindowKey, read_aggregates, verify};
use e2e::{now_ns, unique};
use plumbing::kafka::{KafkaSettings, TopicSettings, await_deliveries};
use proto::prost::Message as _;
use proto::v1::{Aggregate, WindowStats};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

/// The deadline of every Kafka wait in these tests: long enough for a dead node to be fenced (the
/// brokers' default session timeout is 9 s) and a partition to move to a new leader.
const KAFKA_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster() {
    let started = Instant::now();
    let cluster = Cluster::start();
    eprintln!("cluster {} ready after {:.1?}", cluster.brokers(), started.elapsed());
    acknowledged_writes_survive_a_node_crash(&cluster).await;
    eprintln!("node crash checked after {:.1?}", started.elapsed());
    the_verifier_reads_committed_windows_and_names_every_fault(&cluster).await;
    eprintln!("verifier checked after {:.1?}", started.elapsed());
    cluster.stop();
}

/// The value of `result`, or a panic saying what could not be done and why.
fn ok<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("cannot {what}: {err}"))
}

/// `windows` of `FormulaData` series as aggregate messages keyed by their series, as the processor
/// writes them.
fn records(windows: &[(WindowKey, WindowStats)]) -> Vec<(String, Vec<u8>)> {
    let series: BTreeMap<String, proto::v1::Series> =
        (0..64).map(|i| (FormulaData::key(i), FormulaData::series_of(i))).collect();
    windows
        .iter()
        .map(|((key, _), stats)| {
            let aggregate = Aggregate { series: Some(series[key].clone()), window: Some(stats.clone()) };
            (key.clone(), aggregate.encode_to_vec())
        })
        .collect()
}

/// Sends `records` and waits until Kafka acknowledged every one, for at most `KAFKA_LIMIT`.
async fn send(producer: &FutureProducer, topic: &str, records: &[(String, Vec<u8>)]) {
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, payload)| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(payload))
                .unwrap_or_else(|(err, _)| panic!("cannot queue a message for {topic}: {err}"))
        })
        .collect();
    tokio::time::timeout(KAFKA_LIMIT, await_deliveries(deliveries))
        .await
        .unwrap_or_else(|_| panic!("{topic}: not every message was acknowledged within {KAFKA_LIMIT:?}"))
        .unwrap_or_else(|err| panic!("{topic}: a message was not acknowledged: {err}"));
}

/// A topic of the cluster, replicated to all three nodes.
async fn replicated_topic(kafka: &KafkaSettings, prefix: &str) -> TopicSettings {
    let topic = TopicSettings { name: unique(prefix), partitions: 3, replication_factor: 3 };
    kafka.ensure_topics(&[&topic]).await.unwrap_or_else(|err| panic!("cannot create {}: {err}", topic.name));
    topic
}

async fn acknowledged_writes_survive_a_node_crash(cluster: &Cluster) {
    let kafka = cluster.kafka();
    let topic = replicated_topic(&kafka, "e2e-harness-crash").await;
    cluster.wait_for_isr(&topic.name, 3, KAFKA_LIMIT);
    let producer: FutureProducer = ok(kafka.producer("e2e-harness").create(), "create a producer");
    let want = FormulaData::new((now_ns() - 3600 * S) / WINDOW * WINDOW, 12, 60, 1).expected();
    let windows: Vec<(WindowKey, WindowStats)> = want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let (before, after) = windows.split_at(windows.len() / 2);

    send(&producer, &topic.name, &records(before)).await;
    if cluster.controls_nodes() {
        cluster.kill_node(2);
        // acks=all waits for every in-sync replica: the writes below succeed once the dead node has been
        // fenced and dropped from the ISR, as min.insync.replicas=2 still holds.
        send(&producer, &topic.name, &records(after)).await;
        // The brokers' metadata follows the controller's decision with a short delay.
        let deadline = Instant::now() + KAFKA_LIMIT;
        loop {
            let isr = ok(cluster.isr(&topic.name), "fetch the ISR");
            if isr.values().all(|(leader, isr)| *leader != 2 && isr.len() == 2 && !isr.contains(&2)) {
                break;
            }
            assert!(Instant::now() < deadline, "node 2 did not leave every ISR: {isr:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster.start_node(2);
        cluster.wait_for_isr(&topic.name, 3, KAFKA_LIMIT);
        // A pause is only shown to take hold here; waiting out the session timeout of a frozen node would
        // test Kafka, not the harness, and take as long as the crash above.
        cluster.pause_node(3);
        let status = cluster.status();
        assert!(status.contains("kafka node 3 paused"), "{status}");
        cluster.resume_node(3);
        let status = cluster.status();
        assert!(status.lines().all(|line| line.contains(" running ")), "{status}");
    } else {
        eprintln!("the cluster is not this test's ({}): no node is killed", e2e::cluster::BROKERS_VAR);
        send(&producer, &topic.name, &records(after)).await;
    }
    let verdict = verify(&kafka, &topic.name, &want, Options::default(), KAFKA_LIMIT);
    assert!(verdict.is_clean(), "every acknowledged window is there once: {verdict}");
    assert_eq!(verdict.read, windows.len());
}

async fn the_verifier_reads_committed_windows_and_names_every_fault(cluster: &Cluster) {
    let kafka = cluster.kafka();
    let topic = replicated_topic(&kafka, "e2e-harness-verify").await;
    let data = FormulaData::new((now_ns() - 3600 * S) / WINDOW * WINDOW, 5, 40, 2);
    let want: Expected = data.expected();
    let keys: Vec<&WindowKey> = want.keys().collect();
    let (lost, duplicated, wrong, in_a_commit) = (keys[0].clone(), keys[1].clone(), keys[2].clone(), keys[3].clone());
    let unexpected: WindowKey = (FormulaData::key(0), data.base + 100 * WINDOW);
    let mut bad = want[&wrong].clone();
    bad.sum += 1.0;
    let mut extra = want[&(FormulaData::key(0), data.base)].clone();
    extra.start_ns = unexpected.1;
    extra.end_ns = unexpected.1 + WINDOW;

    // Outside transactions: everything but the lost window and the one written in a transaction, the
    // duplicated one twice, the wrong one wrong, and a window nobody expects.
    let plain: FutureProducer = ok(kafka.producer("e2e-harness").create(), "create a producer");
    let mut windows: Vec<(WindowKey, WindowStats)> = want
        .iter()
        .filter(|(k, _)| **k != lost && **k != in_a_commit)
        .map(|(k, v)| (k.clone(), if *k == wrong { bad.clone() } else { v.clone() }))
        .collect();
    windows.push((duplicated.clone(), want[&duplicated].clone()));
    windows.push((unexpected.clone(), extra.clone()));
    send(&plain, &topic.name, &records(&windows)).await;
    // One message keyed by another series than the one it holds.
    let (_, payload) = records(&[(lost.clone(), want[&lost].clone())]).remove(0);
    send(&plain, &topic.name, &[(FormulaData::key(63), payload)]).await;

    // In transactions: an aborted one holding the lost window, copies of others and an unexpected one,
    // all acknowledged by the brokers and then aborted, so they are in the log but must stay invisible;
    // and a committed one holding a window, whose commit marker the reader must step over.
    let mut config = kafka.producer("e2e-harness-tx");
    config.set("transactional.id", unique("e2e-harness-tx"));
    let transactional: FutureProducer = ok(config.create(), "create a transactional producer");
    let timeout = Timeout::After(KAFKA_LIMIT);
    ok(transactional.init_transactions(timeout), "init transactions");
    ok(transactional.begin_transaction(), "begin a transaction");
    let aborted = [
        (lost.clone(), want[&lost].clone()),
        (in_a_commit.clone(), want[&in_a_commit].clone()),
        (keys[4].clone(), want[keys[4]].clone()),
        ((FormulaData::key(1), data.base + 200 * WINDOW), extra),
    ];
    send(&transactional, &topic.name, &records(&aborted)).await;
    ok(transactional.abort_transaction(timeout), "abort the transaction");
    ok(transactional.begin_transaction(), "begin a transaction");
    send(&transactional, &topic.name, &records(&[(in_a_commit.clone(), want[&in_a_commit].clone())])).await;
    ok(transactional.commit_transaction(timeout), "commit the transaction");

    let reading = read_aggregates(&kafka, &topic.name, KAFKA_LIMIT);
    assert!(
        reading.aggregates.iter().any(|o| o.key == in_a_commit),
        "the committed transaction's window is read"
    );
    let verdict = e2e::verify::compare(&reading, &want, Options::default());
    eprintln!("the verdict on a deliberately faulty topic: {verdict}");
    assert_eq!(verdict.lost, vec![lost], "{verdict}");
    assert_eq!(verdict.duplicated, vec![(duplicated, 2)], "{verdict}");
    assert_eq!(verdict.wrong, vec![(wrong.clone(), bad, want[&wrong].clone())], "{verdict}");
    assert_eq!(verdict.unexpected, vec![unexpected], "{verdict}");
    assert_eq!(verdict.malformed.len(), 1, "{verdict}");
    assert!(verdict.malformed[0].contains("but holds load{series=\"0\"}"), "{verdict}");
    assert_eq!(verdict.read, windows.len() + 1, "every committed aggregate, none of the aborted ones");
    assert!(!verdict.is_clean());
}

#[test]
fn a_service_process_is_paused_resumed_killed_and_terminated() {
    let mut sleeper = Service::spawn_with_args(Path::new("sleep"), &["30"], &[]);
    assert!(sleeper.is_running());
    sleeper.pause();
    assert_eq!(state(sleeper.pid(), 'T'), 'T', "SIGSTOP stops the process");
    assert!(sleeper.is_running(), "a stopped process still runs");
    sleeper.resume();
    assert_eq!(state(sleeper.pid(), 'S'), 'S', "SIGCONT lets it sleep on");
    let status = sleeper.kill();
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(!sleeper.is_running());

    // A paused process is resumed by terminate, so that it sees the SIGTERM.
    let mut sleeper = Service::spawn_with_args(Path::new("sleep"), &["30"], &[]);
    sleeper.pause();
    let status = sleeper.terminate(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(15), "{status}");
}

/// The state letter of process `pid` (R, S, D, T, Z, ...) from /proc, once it is `want` or 5 s passed.
/// A signal is delivered asynchronously, and a process just started may still be running (R) or
/// waiting on the disk (D) while it loads, so the state is polled until it settles.
fn state(pid: u32, want: char) -> char {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = ok(std::fs::read_to_string(format!("/proc/{pid}/stat")), "read /proc/<pid>/stat");
        let state = stat.rsplit(") ").next().and_then(|rest| rest.chars().next());
        let state = state.unwrap_or_else(|| panic!("no state in {stat:?}"));
        if state == want || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_processor_with_bad_settings_exits_with_64_and_names_the_key() {
    // A key of the Kafka settings every service shares, which the processor's own settings can change
    // around without breaking this test of the harness.
    let env = [("RUNNEL_PROCESSOR__KAFKA__REQUEST_TIMEOUT".to_owned(), "soon".to_owned())];
    let mut processor = Service::spawn(&bin("processor"), &env);
    let status = processor.wait(Duration::from_secs(30));
    let log = processor.log_tail(20);
    assert_eq!(status.code(), Some(64), "{status}: {log}");
    assert!(log.contains("kafka.request_timeout") && log.contains("soon"), "{log}");
}
