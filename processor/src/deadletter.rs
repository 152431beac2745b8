//! Replaying dead letters: the points of chosen dead letters go back to the points topic, where the
//! processor judges them again by its rules (a point whose window is still open joins it; one whose
//! window has closed is dead-lettered again). Progress is kept in a consumer group, so a second replay
//! sends only what arrived since the first. The points and the group's new offsets commit in one Kafka
//! transaction: a replay that fails half-way sends nothing, and running it again sends everything once.

use std::time::{Duration, Instant};

use plumbing::kafka::KafkaSettings;
use proto::prost::Message as _;
use proto::v1::DeadLetter;
use proto::v1::dead_letter::Reason;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Points sent back to the points topic.
    pub sent: u64,
    /// Dead letters of other reasons, or without a decodable point (malformed bytes cannot be replayed).
    pub skipped: u64,
}

/// A replay request.
#[derive(Debug, Clone)]
pub struct Replay {
    pub deadletter_topic: String,
    pub points_topic: String,
    /// Consumer group that remembers how far replays got.
    pub group: String,
    /// Which dead letters to replay; empty means every reason that carries a point.
    pub reasons: Vec<Reason>,
    /// How long to wait for the dead-letter topic's end.
    pub timeout: Duration,
}

/// Replays the dead letters that arrived since the group's last replay, up to the topic's end as it was
/// when the replay started.
pub async fn replay(kafka: &KafkaSettings, request: &Replay) -> Result<Replayed> {
    let (kafka, request) = (kafka.clone(), request.clone());
    // Transactional calls block: off the async workers (and fine on a current-thread runtime).
    tokio::task::spawn_blocking(move || replay_blocking(&kafka, &request)).await?
}

fn replay_blocking(kafka: &KafkaSettings, request: &Replay) -> Result<Replayed> {
    // Partition EOF events tell when a partition with nothing (more) to read is done.
    let consumer: BaseConsumer =
        kafka.consumer("runnel-replay", &request.group).set("enable.partition.eof", "true").create()?;
    // One transactional id per replay group: a second replay of the same group fences a stuck first one.
    let transactional_id = format!("runnel-replay-{}", request.group);
    let producer: BaseProducer =
        kafka.transactional_producer("runnel-replay", &transactional_id, request.timeout).create()?;
    producer.init_transactions(request.timeout)?;
    producer.begin_transaction()?;
    match send_and_commit(kafka, request, &consumer, &producer) {
        Ok(done) => Ok(done),
        Err(err) => {
            if let Err(abort) = producer.abort_transaction(request.timeout) {
                tracing::warn!(error = %abort, "replay transaction not aborted; the broker times it out");
            }
            Err(err)
        }
    }
}

/// Sends the points of the wanted dead letters and commits them with the group's new offsets.
fn send_and_commit(kafka: &KafkaSettings, request: &Replay, consumer: &BaseConsumer, producer: &BaseProducer) -> Result<Replayed> {
    let metadata = consumer.fetch_metadata(Some(&request.deadletter_topic), kafka.request_timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // Where to stop: each partition's end now. Offsets are not contiguous (transaction markers), so the
    // stop test is the consumer's position, not a message count.
    let mut ends = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (_, high) = consumer.fetch_watermarks(&request.deadletter_topic, partition, kafka.request_timeout)?;
        ends.push((partition, high));
        assignment.add_partition(&request.deadletter_topic, partition);
    }
    let committed = consumer.committed_offsets(assignment, kafka.request_timeout)?;
    let mut start = TopicPartitionList::new();
    for &partition in &partitions {
        let offset = committed
            .find_partition(&request.deadletter_topic, partition)
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        start.add_partition_offset(&request.deadletter_topic, partition, offset)?;
    }
    consumer.assign(&start)?;

    let mut done = Replayed::default();
    let mut finished: std::collections::HashSet<i32> = std::collections::HashSet::new();
    let deadline = Instant::now() + request.timeout;
    let end_of = |partition: i32| ends.iter().find(|(p, _)| *p == partition).map_or(0, |(_, end)| *end);
    while finished.len() < partitions.len() {
        if Instant::now() >= deadline {
            return Err(Error::Kafka(rdkafka::error::KafkaError::NoMessageReceived));
        }
        // Dead letters written since the replay began (a replayed point that is late again, say) wait for
        // the next replay: a replay never chases its own output.
        let position = consumer.position()?;
        for &(partition, end) in &ends {
            if let Some(Offset::Offset(at)) = position.find_partition(&request.deadletter_topic, partition).map(|e| e.offset())
                && at >= end {
                    finished.insert(partition);
                }
        }
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                finished.insert(partition);
                continue;
            }
            Some(other) => other?,
        };
        if message.offset() >= end_of(message.partition()) || finished.contains(&message.partition()) {
            finished.insert(message.partition());
            continue;
        }
        let letter = message.payload().map(DeadLetter::decode);
        let Some(Ok(DeadLetter { reason, point: Some(point), .. })) = letter else {
            done.skipped += 1;
            continue;
        };
        let wanted = request.reasons.is_empty() || request.reasons.iter().any(|r| *r as i32 == reason);
        if !wanted {
            done.skipped += 1;
            continue;
        }
        let (key, payload) = (point.series_key(), point.encode_to_vec());
        loop {
            match producer.send(BaseRecord::to(&request.points_topic).key(&key).payload(&payload)) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    producer.poll(Duration::from_millis(10));
                }
                Err((err, _)) => return Err(Error::Delivery(err)),
            }
        }
        producer.poll(Duration::ZERO);
        done.sent += 1;
    }
    let position = consumer.position()?;
    let mut commit = TopicPartitionList::new();
    for elem in position.elements() {
        // Never past the end this replay stopped at: later dead letters belong to the next replay.
        if let Offset::Offset(at) = elem.offset() {
            let at = at.min(end_of(elem.partition()));
            commit.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(at))?;
        }
    }
    // The group's offsets move with the points, or neither does.
    if commit.count() > 0 {
        let group = consumer.group_metadata().ok_or(Error::Kafka(rdkafka::error::KafkaError::NoMessageReceived))?;
        producer.send_offsets_to_transaction(&commit, &group, request.timeout)?;
    }
    producer.commit_transaction(request.timeout)?;
    Ok(done)
}
