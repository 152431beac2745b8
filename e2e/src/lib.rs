//! The harness of the end-to-end tests: the broker they run against, unique names per test, services
//! started in-process on OS-assigned ports, and polling with a deadline instead of sleeping.
//!
//! This is test support: a broken precondition is a failed test, so panicking (`expect`) is the way it
//! reports, and settings are built by assigning to defaults, which reads best in tests.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::field_reassign_with_default)]

pub mod certs;
pub mod cluster;
pub mod oracle;
pub mod process;
pub mod services;
pub mod stored;
pub mod verify;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plumbing::Shutdown;
use plumbing::kafka::{KafkaSettings, TopicSettings};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;

/// The broker under test: `KAFKA_BROKERS`, which the test command sets after starting one.
pub fn kafka() -> KafkaSettings {
    let brokers = std::env::var(plumbing::config::KAFKA_BROKERS_VAR).unwrap_or_else(|_| {
        panic!("KAFKA_BROKERS is not set: these tests need a real broker; run `deploy/test.sh`, which starts one")
    });
    KafkaSettings { brokers, ..KafkaSettings::default() }
}

/// In-process analyzer settings on this broker with topics of their own (one partition each), port 0,
/// and `rules` (TOML `[[rules]]`) in a rules file of their own, whose path comes back too.
pub fn analyzer_settings(rules: &str) -> (analyzer::Settings, std::path::PathBuf) {
    let file = std::env::temp_dir().join(unique("runnel-e2e-rules")).with_extension("toml");
    std::fs::write(&file, rules).expect("rules file written");
    // A transactional id of its own: two analyzers of one test process sharing the default (from the
    // hostname) would fence each other.
    let mut s = analyzer::Settings {
        kafka: kafka(),
        group_id: unique("e2e-analyzer"),
        transactional_id: unique("e2e-analyzer"),
        rules_file: Some(file.clone()),
        ..Default::default()
    };
    s.grpc.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.ops.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    s.topics.aggregates = topic("e2e-aggregates", 1);
    s.topics.alerts = topic("e2e-alerts", 1);
    s.topics.changelog = topic("e2e-analyzer-changelog", 1);
    s.topics.points = topic("e2e-points", 1);
    s.topics.points_changelog = topic("e2e-analyzer-points-changelog", 1);
    (s, file)
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A topic with a unique name.
pub fn topic(prefix: &str, partitions: i32) -> TopicSettings {
    TopicSettings { name: unique(prefix), partitions, replication_factor: 1 }
}

/// Wall-clock time in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

/// A service running in-process. Dropped without [`Running::stop`] (a test that failed), it is told
/// to stop, so that its blocking threads end and the failed test ends instead of hanging.
#[derive(Debug)]
pub struct Running<E> {
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: std::fmt::Debug + Send + 'static> Running<E> {
    pub fn spawn<F>(run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self { shutdown, task: Some(task) }
    }

    /// Stops the service as SIGTERM would and waits for a clean exit.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("a running service has its task");
        let result = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the service did not stop within 60 s")
            .expect("the service task panicked");
        result.expect("the service stopped with an error");
    }
}

impl<E> Drop for Running<E> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `probe` until it returns `Some`, for at most `limit`; panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many messages `topic` holds, summed over its partitions (high minus low watermark). Exact for
/// topics written without transactions, whose offsets are contiguous.
pub fn message_count(kafka: &KafkaSettings, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka.consumer("e2e-count", &unique("e2e-count")).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    (0..partitions)
        .map(|p| {
            let p = i32::try_from(p).expect("partition number");
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            high - low
        })
        .sum()
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// Reads `topic` from the beginning with `read_committed` until `want` messages arrived or `limit`
/// passed; returns what arrived.
pub fn read_committed(kafka: &KafkaSettings, topic: &str, want: usize, limit: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = kafka.consumer("e2e-read", &unique("e2e-read")).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).expect("offset");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + limit;
    let mut records = Vec::new();
    while records.len() < want && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a message");
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
        }
    }
    records
}

/// Sends `points` to `topic` at about `rate` points a second (so that faults fall while the load flows),
/// keyed by series, acks=all, idempotent; returns how many were sent once all are acknowledged.
pub fn produce_points(kafka: &KafkaSettings, points: impl Iterator<Item = proto::v1::Point>, topic: &str, rate: u64) -> u64 {
    use proto::prost::Message as _;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

    let producer: BaseProducer = kafka.producer("e2e-load").create().expect("producer");
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    for point in points {
        let (key, payload) = (point.series_key(), point.encode_to_vec());
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => panic!("produce: {err}"),
            }
        }
        sent += 1;
        producer.poll(Duration::ZERO);
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    sent
}

/// The text of an OTLP attribute value: a string as it is, anything else as Rust writes it.
pub fn otlp_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The `service.name` of an OTLP export's resource, empty when it has none.
pub fn otlp_service(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource.iter().flat_map(|r| &r.attributes).find(|kv| kv.key == "service.name").map(|kv| otlp_text(kv.value.as_ref())).unwrap_or_default()
}
