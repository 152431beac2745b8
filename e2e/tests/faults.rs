//! Exactly once under faults, with real processes on a real broker: while 200,000 points over 1,000
//! series flow, processors are SIGKILLed and restarted, the group is rescaled 1 → 2 → 3 → 1, or a
//! processor is paused past its session timeout and resumed as a zombie, or, on a three-node cluster,
//! brokers are SIGKILLed under the processors; every window comes out exactly once with the count, sum
//! and gradient its formula gives. And the collector under a broker outage: clients get retryable
//! refusals, and every point acknowledged is in Kafka exactly once. A transactional producer started
//! while the broker is out of reach waits for it rather than failing the service's start.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::oracle::{S, Topics, WINDOW};
use e2e::cluster::Cluster;
use e2e::process::{Service, bin};
use e2e::verify::{FormulaData, Options, verify};
use e2e::{kafka, now_ns, produce_points, unique};
use plumbing::kafka::KafkaSettings;
use proto::prost::Message as _;

/// Processor settings every instance shares: a short session timeout, so that the group notices a
/// killed member in seconds; an idle timeout longer than the test, so that only event time closes
/// windows (the formula's assumption); and a commit interval long enough that a kill almost always
/// lands between a window's emission and the next commit, where an at-least-once processor would emit
/// it again (with `delivery = "at-least-once"` this test finds duplicates).
const SETTINGS: &str = r#"
commit_interval = "2s"

[windows]
idle_timeout = "1h"

[kafka.options]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"#;

fn spawn(kafka: &KafkaSettings, config: &Path, topics: &Topics, group: &str, instance: &str, replication_factor: i32) -> Service {
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    Service::spawn_with_args(
        &bin("processor"),
        &["--config", &config.display().to_string()],
        &[
            env("KAFKA_BROKERS", &kafka.brokers),
            env("RUNNEL_PROCESSOR__GROUP_ID", group),
            // Stable per instance: the restarted instance fences the killed one's open transaction.
            env("RUNNEL_PROCESSOR__TRANSACTIONAL_ID", &format!("{group}-{instance}")),
            env("RUNNEL_PROCESSOR__TOPICS__POINTS__NAME", &topics.points.name),
            env("RUNNEL_PROCESSOR__TOPICS__AGGREGATES__NAME", &topics.aggregates.name),
            env("RUNNEL_PROCESSOR__TOPICS__DEADLETTER__NAME", &topics.deadletter.name),
            env("RUNNEL_PROCESSOR__CHANGELOG__REPLICATION_FACTOR", &replication_factor.to_string()),
        ],
    )
}

/// Sends every point of `data` at about `rate` points a second, keyed by series, acks=all, idempotent.
fn produce(kafka: &KafkaSettings, data: &FormulaData, topic: &str, rate: u64) -> u64 {
    produce_points(kafka, data.points(), topic, rate)
}

/// The fault tests run one at a time: each loads both cores, and three at once would measure the
/// machine rather than the processor.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One fault test's topics, group, settings file and load.
struct Run {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    kafka: KafkaSettings,
    topics: Topics,
    group: String,
    dir: std::path::PathBuf,
    data: FormulaData,
    replication_factor: i32,
}

impl Run {
    /// A run on the single broker of `KAFKA_BROKERS`.
    async fn new() -> Self {
        Self::on(ONE_AT_A_TIME.lock().await, kafka(), 1).await
    }

    /// A run on `kafka`, its topics replicated `replication_factor` times.
    async fn on(turn: tokio::sync::MutexGuard<'static, ()>, kafka: KafkaSettings, replication_factor: i32) -> Self {
        let mut topics = Topics::unique(4);
        for topic in [&mut topics.points, &mut topics.aggregates, &mut topics.deadletter] {
            topic.replication_factor = replication_factor;
        }
        kafka.ensure_topics(&[&topics.points, &topics.aggregates, &topics.deadletter]).await.unwrap();
        let dir = std::env::temp_dir().join(unique("runnel-faults"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("processor.toml"), SETTINGS).unwrap();
        let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
        let data = FormulaData::new(base, 1_000, 200, 7);
        assert!(data.len() >= 200_000);
        Self { _turn: turn, kafka, topics, group: unique("e2e-faults"), dir, data, replication_factor }
    }

    fn spawn(&self, instance: &str) -> Service {
        spawn(&self.kafka, &self.dir.join("processor.toml"), &self.topics, &self.group, instance, self.replication_factor)
    }

    /// Sends the load in the background, at a pace that makes it last about 33 s.
    fn produce(&self) -> tokio::task::JoinHandle<u64> {
        let (kafka, data, topic) = (self.kafka.clone(), self.data, self.topics.points.name.clone());
        tokio::task::spawn_blocking(move || produce(&kafka, &data, &topic, 6_000))
    }

    /// Waits until the aggregates topic holds every expected window, or until it is clear it never will;
    /// panics with the verdict unless every window is there exactly once and right.
    async fn assert_exactly_once(&self, what: &str, logs: &[&Service]) {
        let expected = self.data.expected();
        let deadline = Instant::now() + Duration::from_secs(180);
        let verdict = loop {
            let verdict = verify(&self.kafka, &self.topics.aggregates.name, &expected, Options::default(), Duration::from_secs(60));
            if verdict.is_clean() || Instant::now() > deadline {
                break verdict;
            }
            // Windows still missing may just not have been processed yet; a duplicate or a wrong window
            // never heals, so there is no point waiting for it.
            if !verdict.duplicated.is_empty() || !verdict.wrong.is_empty() || !verdict.unexpected.is_empty() {
                break verdict;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        if !verdict.is_clean() {
            let tails: Vec<String> = logs.iter().map(|s| format!("{}\n{}", s.log_path().display(), s.log_tail(30))).collect();
            let stacks: Vec<String> = logs.iter().map(|s| s.stacks()).collect();
            panic!("{what}:\n{verdict}\nlogs:\n{}\nstacks:\n{}", tails.join("\n---\n"), stacks.join("\n---\n"));
        }
        eprintln!("{what}: {} windows, each exactly once", expected.len());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_processors_emit_every_window_exactly_once() {
    let run = Run::new().await;
    let mut a = run.spawn("a");
    let b = run.spawn("b");
    let producing = run.produce();

    // SIGKILL instance a every 10 s while the load flows, and once more after it, restarting it each time.
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let status = a.kill();
        assert!(!status.success(), "a was running when killed");
        kills += 1;
        a = run.spawn("a");
        if producing.is_finished() {
            break;
        }
        assert!(kills < 20, "the load took far longer than planned");
    }
    let sent = producing.await.unwrap();
    assert!(kills >= 3, "only {kills} kills");

    run.assert_exactly_once(&format!("{sent} points, {kills} SIGKILLs"), &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaling_one_two_three_one_emits_every_window_exactly_once() {
    let run = Run::new().await;
    let a = run.spawn("a");
    let producing = run.produce();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut b = run.spawn("b");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut c = run.spawn("c");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Scale back in: SIGTERM hands the partitions over cleanly (commit on revoke).
    assert!(b.terminate(Duration::from_secs(30)).success(), "{}", b.log_tail(30));
    assert!(c.terminate(Duration::from_secs(30)).success(), "{}", c.log_tail(30));
    let sent = producing.await.unwrap();
    run.assert_exactly_once(&format!("{sent} points, 1 -> 2 -> 3 -> 1 processors"), &[&a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_paused_past_its_session_is_fenced() {
    let run = Run::new().await;
    let mut a = run.spawn("a");
    let b = run.spawn("b");
    let producing = run.produce();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Paused longer than the 6 s session timeout: the group gives a's partitions to b. When a wakes, its
    // open transaction and its offsets belong to a generation that is gone; they must not commit.
    a.pause();
    tokio::time::sleep(Duration::from_secs(12)).await;
    a.resume();
    let sent = producing.await.unwrap();
    run.assert_exactly_once(&format!("{sent} points, a paused 12 s"), &[&a, &b]).await;
    assert!(a.is_running(), "the resumed zombie rejoins rather than dying:\n{}", a.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_killed_under_the_processors_lose_and_duplicate_nothing() {
    let turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    assert!(cluster.controls_nodes(), "this test kills brokers: unset KAFKA_CLUSTER_BROKERS to let it start its own cluster");
    let run = Run::on(turn, cluster.kafka(), 3).await;
    let a = run.spawn("a");
    let b = run.spawn("b");
    let producing = run.produce();
    // One broker at a time, so that min.insync.replicas 2 still holds: SIGKILL node 2 mid-load, bring it
    // back, then node 3. Partition leaders, the group coordinator and the transaction coordinator move.
    for node in [2, 3] {
        tokio::time::sleep(Duration::from_secs(8)).await;
        cluster.kill_node(node);
        tokio::time::sleep(Duration::from_secs(6)).await;
        cluster.start_node(node);
    }
    let sent = producing.await.unwrap();
    run.assert_exactly_once(&format!("{sent} points, brokers 2 and 3 SIGKILLed in turn"), &[&a, &b]).await;
    drop((a, b, run));
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_points_are_dead_lettered_once_each_under_kills_and_replay_to_the_same_fate() {
    use proto::v1::DeadLetter;
    use proto::v1::dead_letter::Reason;

    let run = Run::new().await;
    let mut a = run.spawn("a");
    let b = run.spawn("b");
    let producing = run.produce();
    tokio::time::sleep(Duration::from_secs(10)).await;
    a.kill();
    a = run.spawn("a");
    producing.await.unwrap();
    // After the closing points: 100 points whose windows have closed.
    let late: Vec<proto::v1::Point> = run.data.late_points(10).collect();
    assert_eq!(late.len(), 100);
    let sent = produce_points(&run.kafka, late.iter().cloned(), &run.topics.points.name, 6_000);
    run.assert_exactly_once(&format!("{sent} late points after the load"), &[&a, &b]).await;

    let letters = |want: usize| {
        let records = e2e::read_committed(&run.kafka, &run.topics.deadletter.name, want + 1, Duration::from_secs(30));
        records.iter().map(|r| DeadLetter::decode(r.payload.as_slice()).unwrap()).collect::<Vec<_>>()
    };
    let dead = letters(100);
    assert_eq!(dead.len(), 100, "one dead letter per late point, none twice despite the kill");
    assert!(dead.iter().all(|d| d.reason == Reason::Late as i32));
    let mut got: Vec<String> = dead.iter().map(|d| d.point.as_ref().unwrap().series_key()).collect();
    let mut want: Vec<String> = late.iter().map(proto::v1::Point::series_key).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // Replayed, they meet the same closed windows: late again, and still no window changes.
    let request = processor::deadletter::Replay {
        deadletter_topic: run.topics.deadletter.name.clone(),
        points_topic: run.topics.points.name.clone(),
        group: unique("e2e-faults-replay"),
        reasons: vec![Reason::Late],
        timeout: Duration::from_secs(60),
    };
    let replayed = processor::deadletter::replay(&run.kafka, &request).await.unwrap();
    assert_eq!(replayed, processor::deadletter::Replayed { sent: 100, skipped: 0 });
    assert_eq!(letters(200).len(), 200);
    run.assert_exactly_once("after the replay", &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_under_the_collector_loses_and_duplicates_nothing() {
    use proto::tonic::Code;
    use proto::v1::ingest_service_client::IngestServiceClient;
    use proto::v1::{Point, WriteRequest};

    const BATCHES: u32 = 300;
    const PER_BATCH: u32 = 100;
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    assert!(cluster.controls_nodes(), "this test kills brokers: unset KAFKA_CLUSTER_BROKERS to let it start its own cluster");
    let mut settings = collector::Settings::default();
    settings.kafka = cluster.kafka();
    settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
    settings.ops.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.topics.points = plumbing::kafka::TopicSettings { name: unique("e2e-outage-points"), partitions: 3, replication_factor: 3 };
    // Room for 5 batches awaiting Kafka, fewer than the 8 clients: while Kafka stalls, some are refused.
    settings.limits.max_in_flight_points = 500;
    settings.limits.max_batch_points = 500;
    let topic = settings.topics.points.name.clone();
    let app = collector::App::build(settings).await.unwrap();
    let addr = format!("http://{}", app.grpc_addr());
    let running = e2e::Running::spawn(|shutdown| app.run(shutdown));

    // Eight clients, each writing its batches in turn and retrying a refused one after a pause, as a
    // client should on a retryable code; each point's value is unique, so the topic tells which were written.
    let base = now_ns();
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut client = IngestServiceClient::connect(addr).await.unwrap();
                let (mut acked, mut refused) = (Vec::new(), 0u32);
                for b in (w..BATCHES).step_by(8) {
                    let points: Vec<Point> = (0..PER_BATCH)
                        .map(|i| {
                            let n = b * PER_BATCH + i;
                            let tags = [("writer".to_owned(), w.to_string()), ("i".to_owned(), (n % 50).to_string())].into();
                            Point { metric: "outage".into(), tags, timestamp_ns: base + i64::from(n), value: f64::from(n) }
                        })
                        .collect();
                    let deadline = Instant::now() + Duration::from_secs(240);
                    loop {
                        match client.write(WriteRequest { points: points.clone() }).await {
                            Ok(_) => break,
                            Err(status) if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) => {
                                assert!(Instant::now() < deadline, "batch {b} still refused after 240 s: {status:?}");
                                refused += 1;
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                            Err(status) => panic!("batch {b}: a code that is not retryable: {status:?}"),
                        }
                    }
                    acked.extend((0..PER_BATCH).map(|i| b * PER_BATCH + i));
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                (acked, refused)
            })
        })
        .collect();

    // Two of three brokers gone: no partition has the two in-sync replicas acks=all needs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(2);
    cluster.kill_node(3);
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.start_node(2);
    cluster.start_node(3);

    let (mut acked, mut refused) = (Vec::new(), 0);
    for writer in writers {
        let (a, r) = writer.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    running.stop().await;
    assert_eq!(acked.len(), (BATCHES * PER_BATCH) as usize, "every batch was acknowledged in the end");
    assert!(refused > 0, "the outage was long enough to fill the in-flight room, so clients were refused");

    let total = (BATCHES * PER_BATCH) as usize;
    let records = e2e::read_committed(&cluster.kafka(), &topic, total + 1, Duration::from_secs(60));
    let mut seen = vec![0u32; total];
    for record in &records {
        let point = Point::decode(record.payload.as_slice()).unwrap();
        seen[point.value as usize] += 1;
    }
    let lost = seen.iter().filter(|n| **n == 0).count();
    let doubled = seen.iter().filter(|n| **n > 1).count();
    assert_eq!((lost, doubled, records.len()), (0, 0, total), "{refused} refusals; every acknowledged point exactly once");
    eprintln!("{total} points through a broker outage: {refused} retryable refusals, none lost, none twice");
    cluster.stop();
}

/// A processor (or analyzer) started while the transaction coordinator is out of reach waits for it
/// instead of exiting: here every connection to the broker is refused for the first few seconds, several
/// times the registration's timeout, and the producer still registers once they get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_producer_started_while_the_broker_is_unreachable_registers_once_it_is_reachable() {
    const REFUSED_FOR: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_secs(1);
    let kafka = kafka();
    let broker = kafka.brokers.split(',').next().unwrap().to_owned();
    // Bootstrap goes through this relay; the metadata then names the broker itself.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let opened = Instant::now();
    let relaying = tokio::spawn({
        let refused = std::sync::Arc::clone(&refused);
        async move {
            loop {
                let (mut client, _) = relay.accept().await.unwrap();
                if opened.elapsed() < REFUSED_FOR {
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    continue; // dropped: the connection closes at once
                }
                let broker = broker.clone();
                tokio::spawn(async move {
                    let mut upstream = tokio::net::TcpStream::connect(&broker).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        }
    });
    let mut through_relay = kafka.clone();
    through_relay.brokers = relay_addr.to_string();
    let config = through_relay.transactional_producer("e2e-faults", &unique("e2e-faults-unreachable"), TIMEOUT);
    let registering = tokio::task::spawn_blocking(move || {
        plumbing::txn::Transactions::new(config, TIMEOUT, plumbing::ops::KafkaStats::default()).map(|_| opened.elapsed())
    });
    let registered_after = tokio::time::timeout(Duration::from_secs(120), registering).await.expect("registration ends").unwrap();
    relaying.abort();
    let registered_after = registered_after.expect("the producer registers once the broker is reachable");
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) > 0, "the first attempts were refused");
    assert!(registered_after >= REFUSED_FOR, "registered only through the relay, after {registered_after:?}");
}
