//! Changelog topics: compacted topics in which a service keeps the state of each input partition
//! (changelog partition p for input partition p) as the latest record of each key, written in the same
//! transaction as the input offsets. A new owner of an input partition reads its changelog partition
//! back, up to the end its last commit recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Why a changelog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Timeout(String),
}

/// The changelog reader's context: reaching a partition's end is what it waits for, not an error.
#[derive(Debug, Clone, Copy)]
struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if let KafkaError::PartitionEOF(_) = error {
            return;
        }
        tracing::warn!(error = %error, reason, "changelog reader error; librdkafka recovers");
    }
}

impl ConsumerContext for QuietEof {}

/// Reads the `changelog` partitions of `wanted` (partition, end) from the beginning: the latest payload
/// of each key that no tombstone removed. Waits first until each partition's stable end reaches its
/// `end` (the last commit's markers may still be on their way), then reads to that stable end.
/// `reader` must be a `read_committed` consumer configuration with `enable.partition.eof` on.
pub fn read(
    reader: &ClientConfig,
    changelog: &str,
    wanted: &[(i32, i64)],
    timeout: Duration,
) -> Result<HashMap<i32, BTreeMap<String, Vec<u8>>>, ReadError> {
    let mut logs: HashMap<i32, BTreeMap<String, Vec<u8>>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(logs);
    }
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer<QuietEof> = reader.create_with_context(QuietEof)?;
    let mut assignment = TopicPartitionList::new();
    for &(partition, end) in wanted {
        // A read_committed consumer's high watermark is the last stable offset.
        while consumer.fetch_watermarks(changelog, partition, left())?.1 < end {
            if left().is_zero() {
                return Err(ReadError::Timeout(format!(
                    "{changelog}[{partition}] has not reached its committed end {end} (if the topic was deleted and \
                     created again, reset the group's offsets: its state is gone)"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assignment.add_partition_offset(changelog, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut reading: HashSet<i32> = wanted.iter().map(|(p, _)| *p).collect();
    while !reading.is_empty() {
        if left().is_zero() {
            return Err(ReadError::Timeout(format!("{changelog} partitions {reading:?} not read to their end in {timeout:?}")));
        }
        let message = match consumer.poll(left().min(Duration::from_millis(100))) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                reading.remove(&partition);
                continue;
            }
            Some(polled) => match crate::kafka::unless_transient(polled)? {
                Some(message) => message,
                None => continue,
            },
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let log = logs.entry(message.partition()).or_default();
        match message.payload() {
            None => log.remove(&key),
            Some(bytes) => log.insert(key, bytes.to_vec()),
        };
    }
    Ok(logs)
}

/// The metadata committed with a partition's offset. (rdkafka panics on metadata that is not UTF-8,
/// which an operator's tool may have written.)
pub fn metadata(elem: &TopicPartitionListElem<'_>) -> Option<String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| elem.metadata().to_owned())).ok()
}
