//! The processor binary as an operator runs it: bad settings exit 64 naming the key, and SIGTERM
//! commits the final offsets, with the checkpoint that makes a resume exact, and exits 0.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::Point;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const S: i64 = 1_000_000_000;

fn processor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_processor"));
    command.env_remove("KAFKA_BROKERS").stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

#[test]
fn a_malformed_value_exits_64_naming_the_key() {
    let out = processor().env("RUNNEL_PROCESSOR__WINDOWS__DEFAULT__SIZE", "soon").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid processor configuration") && stderr.contains("windows.default"), "{stderr}");
}

#[test]
fn an_unknown_key_exits_64_naming_it() {
    let out = processor().env("RUNNEL_PROCESSOR__COMIT_INTERVAL", "1s").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("comit_interval"), "{stderr}");
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_final_checkpoint_and_exits_cleanly() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS must name a running broker; run deploy/test.sh");
    let kafka = KafkaSettings { brokers: brokers.clone(), ..KafkaSettings::default() };
    let points = TopicSettings { name: unique("sigterm-points"), partitions: 1, replication_factor: 1 };
    let aggregates = TopicSettings { name: unique("sigterm-aggregates"), partitions: 1, replication_factor: 1 };
    let group = unique("sigterm-group");
    kafka.ensure_topics(&[&points, &aggregates]).await.unwrap();

    // Offsets 0 and 1 fall in [0 s, 10 s); offset 2 at 30 s moves the watermark to 25 s, closing that window
    // and opening [30 s, 40 s).
    let producer: FutureProducer = kafka.producer("sigterm-test").create().unwrap();
    for (t, value) in [(1, 1.0), (2, 2.0), (30, 3.0)] {
        let point = Point { metric: "m".into(), tags: Default::default(), timestamp_ns: 1_000 * S + t * S, value };
        let payload = point.encode_to_vec();
        producer.send(FutureRecord::to(&points.name).key("m{}").payload(&payload), Duration::from_secs(10)).await.unwrap();
    }

    let mut child = processor()
        .env("KAFKA_BROKERS", &brokers)
        .env("RUNNEL_PROCESSOR__GROUP_ID", &group)
        .env("RUNNEL_PROCESSOR__TOPICS__POINTS__NAME", &points.name)
        .env("RUNNEL_PROCESSOR__TOPICS__POINTS__PARTITIONS", "1")
        .env("RUNNEL_PROCESSOR__TOPICS__AGGREGATES__NAME", &aggregates.name)
        .env("RUNNEL_PROCESSOR__TOPICS__AGGREGATES__PARTITIONS", "1")
        // Only the shutdown can commit within this test.
        .env("RUNNEL_PROCESSOR__COMMIT_INTERVAL", "5m")
        .env("RUNNEL_PROCESSOR__TRANSACTION_TIMEOUT", "10m")
        .spawn()
        .unwrap();

    // The aggregate is produced inside a transaction that only the shutdown commits: an uncommitted read
    // shows that the processor got that far, a committed read must not see it yet.
    assert_eq!(read(&kafka, &aggregates.name, "read_uncommitted", Duration::from_secs(60), 1), 1);
    assert_eq!(read(&kafka, &aggregates.name, "read_committed", Duration::from_secs(2), 1), 0);

    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the processor did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(read(&kafka, &aggregates.name, "read_committed", Duration::from_secs(30), 1), 1, "committed at shutdown");

    // A successor resumes after the last point read, with the watermark, and reads the changelog up to
    // the one record of the commit: the open window [30 s, 40 s) (the closed one opened and closed within
    // the transaction, so it never reached the changelog).
    let group_view: BaseConsumer = kafka.consumer("sigterm-check", &group).create().unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&points.name, 0);
    let committed = group_view.committed_offsets(wanted, Duration::from_secs(10)).unwrap();
    let elem = committed.find_partition(&points.name, 0).unwrap();
    assert_eq!(elem.offset(), Offset::Offset(3));
    assert_eq!(elem.metadata(), format!("max={};next=3;log=1", 1_030 * S));
    let changelog = read_all(&kafka, &format!("{group}.changelog"), "read_committed", 2, Duration::from_secs(3));
    assert_eq!(changelog.len(), 1, "one open window");
    let state = proto::v1::WindowState::decode(changelog[0].as_slice()).unwrap();
    assert_eq!((state.start_ns, state.end_ns, state.count, state.sum), (1_030 * S, 1_040 * S, 1, 3.0));
}

/// How many messages partition 0 of `topic` holds at `isolation`, counting up to `want` for at most
/// `limit`.
fn read(kafka: &KafkaSettings, topic: &str, isolation: &str, limit: Duration, want: usize) -> usize {
    read_all(kafka, topic, isolation, want, limit).len()
}

/// The payloads of partition 0 of `topic` at `isolation`, until `want` or `limit`.
fn read_all(kafka: &KafkaSettings, topic: &str, isolation: &str, want: usize, limit: Duration) -> Vec<Vec<u8>> {
    use rdkafka::message::Message as _;
    let consumer: BaseConsumer =
        kafka.consumer("sigterm-probe", &unique("sigterm-probe")).set("isolation.level", isolation).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + limit;
    let mut payloads = Vec::new();
    while payloads.len() < want && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            payloads.push(message.unwrap().payload().unwrap_or_default().to_vec());
        }
    }
    payloads
}

