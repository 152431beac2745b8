//! The processor's Kafka side: consume points, feed each partition's windows, produce closed windows'
//! aggregates, and commit input offsets (with the checkpoint metadata of `window`) only after the
//! aggregates produced so far were acknowledged. Delivery is at least once: a window emitted after the
//! last commit is emitted again, identically, after a crash or a rebalance, and consumers of the
//! aggregates topic key by series and window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use proto::prost::Message as _;
use proto::v1::{Aggregate, Point, Series};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::window::{Checkpoint, Outcome, PartitionWindows, WindowSpec};

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Points merged into a window.
    pub points: AtomicU64,
    /// Points that arrived after their window closed.
    pub late_points: AtomicU64,
    /// Messages on the points topic that are not a `Point`.
    pub malformed: AtomicU64,
    /// Aggregates produced.
    pub windows_emitted: AtomicU64,
    /// Input partitions this instance owns now.
    pub assigned_partitions: AtomicU64,
}

/// Marks the producer broken when librdkafka reports a fatal error, so that no offset is committed for
/// output that may never arrive.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerHealth {
    fatal: Arc<AtomicBool>,
}

impl ClientContext for ProducerHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::SeqCst);
        }
        tracing::error!(error = %error, reason, "producer error");
    }
}

pub(crate) type AggregateProducer = FutureProducer<ProducerHealth>;

/// State shared by the consume loop and the rebalance callbacks, which run inside `recv`.
pub(crate) struct Shared {
    pub(crate) spec: WindowSpec,
    pub(crate) points_topic: String,
    pub(crate) aggregates_topic: String,
    pub(crate) producer: AggregateProducer,
    pub(crate) health: ProducerHealth,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timeout: Duration,
    partitions: Mutex<HashMap<i32, PartitionWindows>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("spec", &self.spec)
            .field("points_topic", &self.points_topic)
            .field("aggregates_topic", &self.aggregates_topic)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        spec: WindowSpec,
        points_topic: String,
        aggregates_topic: String,
        producer: AggregateProducer,
        health: ProducerHealth,
        timeout: Duration,
    ) -> Self {
        Self {
            spec,
            points_topic,
            aggregates_topic,
            producer,
            health,
            stats: Arc::default(),
            timeout,
            partitions: Mutex::default(),
        }
    }

    fn partitions(&self) -> MutexGuard<'_, HashMap<i32, PartitionWindows>> {
        // A panic while holding the lock leaves windows half-updated; the consume loop then fails and
        // nothing more is committed, so continuing with the inner value is safe.
        self.partitions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The offsets and checkpoint metadata of `partitions` (all owned ones when `None`).
    fn checkpoints(&self, only: Option<&[i32]>) -> KafkaResult<TopicPartitionList> {
        let partitions = self.partitions();
        let mut tpl = TopicPartitionList::new();
        for (&partition, windows) in partitions.iter() {
            if only.is_some_and(|only| !only.contains(&partition)) {
                continue;
            }
            let checkpoint = windows.checkpoint();
            if checkpoint.next_offset == 0 && checkpoint.max_event_ns.is_none() {
                continue; // nothing read yet: keep whatever is committed
            }
            let mut elem = tpl.add_partition(&self.points_topic, partition);
            elem.set_offset(Offset::Offset(checkpoint.resume_offset))?;
            elem.set_metadata(checkpoint.metadata());
        }
        Ok(tpl)
    }

    fn producer_ok(&self) -> bool {
        !self.health.fatal.load(Ordering::SeqCst)
    }
}

/// Rebalance handling: commit what a revoked partition has made durable; restore an assigned
/// partition's watermark and replay bound from its committed checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct RebalanceContext {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        let shared = &self.shared;
        let revoked: Vec<i32> = tpl.elements_for_topic(&shared.points_topic).iter().map(|e| e.partition()).collect();
        // Everything emitted so far must be acknowledged before its input offsets are committed.
        let flushed = shared.producer.flush(shared.timeout);
        if consumer.assignment_lost() || flushed.is_err() || !shared.producer_ok() {
            tracing::warn!(partitions = ?revoked, lost = consumer.assignment_lost(), "revoked without commit; the next owner replays");
        } else {
            match shared.checkpoints(Some(&revoked)) {
                Ok(offsets) if offsets.count() > 0 => {
                    if let Err(err) = consumer.commit(&offsets, CommitMode::Sync) {
                        tracing::warn!(error = %err, "commit on revoke failed; the next owner replays");
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "checkpoint on revoke failed"),
            }
        }
        let mut partitions = shared.partitions();
        for partition in &revoked {
            partitions.remove(partition);
        }
        shared.stats.assigned_partitions.store(partitions.len() as u64, Ordering::SeqCst);
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        let shared = &self.shared;
        let committed = consumer.committed_offsets((*tpl).clone(), shared.timeout).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "committed offsets unavailable; partitions start without history");
            TopicPartitionList::new()
        });
        let mut partitions = shared.partitions();
        for elem in tpl.elements_for_topic(&shared.points_topic) {
            let partition = elem.partition();
            let restored = committed.find_partition(&shared.points_topic, partition).and_then(|c| match c.offset() {
                Offset::Offset(resume) => Checkpoint::parse(resume, c.metadata()),
                _ => None,
            });
            tracing::info!(partition, checkpoint = ?restored, "partition assigned");
            let windows = match restored {
                Some(checkpoint) => PartitionWindows::restore(shared.spec, checkpoint),
                None => PartitionWindows::new(shared.spec),
            };
            partitions.insert(partition, windows);
        }
        shared.stats.assigned_partitions.store(partitions.len() as u64, Ordering::SeqCst);
    }
}

pub(crate) type PointConsumer = StreamConsumer<RebalanceContext>;

/// The consume-aggregate-produce loop.
pub(crate) struct Pipeline {
    pub(crate) consumer: PointConsumer,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commit_interval: Duration,
    pending: Vec<DeliveryFuture>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl Pipeline {
    pub(crate) fn new(consumer: PointConsumer, shared: Arc<Shared>, commit_interval: Duration) -> Self {
        Self { consumer, shared, commit_interval, pending: Vec::new() }
    }

    /// Runs until `shutdown`, then commits what is durable and leaves the group.
    pub(crate) async fn run(mut self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.shared.points_topic])?;
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.commit(CommitMode::Async).await?,
                message = self.consumer.recv() => {
                    let aggregates = self.handle(&message?);
                    for aggregate in aggregates {
                        self.send(aggregate).await?;
                    }
                }
            }
        }
        self.commit(CommitMode::Sync).await?;
        self.consumer.unsubscribe();
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Merges one message into its partition's windows; returns the windows it closed.
    fn handle(&self, message: &BorrowedMessage<'_>) -> Vec<Aggregate> {
        let stats = &self.shared.stats;
        let (partition, offset) = (message.partition(), message.offset());
        let point = match message.payload().map(Point::decode) {
            Some(Ok(point)) => point,
            Some(Err(err)) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition, offset, error = %err, "not a point; skipped");
                return Vec::new();
            }
            None => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition, offset, "empty message; skipped");
                return Vec::new();
            }
        };
        let key = point.series_key();
        let mut partitions = self.shared.partitions();
        let windows = partitions.entry(partition).or_insert_with(|| PartitionWindows::new(self.shared.spec));
        let (ts, value) = (point.timestamp_ns, point.value);
        let series = || Series { metric: point.metric, tags: point.tags };
        match windows.push(&key, series, ts, value, offset) {
            Outcome::Accepted => {
                stats.points.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Late { window_end_ns, watermark_ns } => {
                stats.late_points.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(partition, offset, series = %key, timestamp_ns = ts, window_end_ns, watermark_ns, "late point dropped");
            }
            Outcome::Replayed => {}
        }
        windows.close_ready()
    }

    async fn send(&mut self, aggregate: Aggregate) -> Result<()> {
        let key = aggregate.series.as_ref().map(Series::key).unwrap_or_default();
        let payload = aggregate.encode_to_vec();
        loop {
            let record = FutureRecord::to(&self.shared.aggregates_topic).key(&key).payload(&payload);
            match self.shared.producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    self.shared.stats.windows_emitted.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // The local queue is full: wait for what is in flight, then try again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.drain().await?,
                Err((err, _)) => return Err(Error::Delivery(err)),
            }
        }
    }

    async fn drain(&mut self) -> Result<()> {
        plumbing::kafka::await_deliveries(self.pending.drain(..)).await.map_err(Error::Delivery)
    }

    /// Commits every owned partition's checkpoint once everything produced so far is acknowledged.
    async fn commit(&mut self, mode: CommitMode) -> Result<()> {
        self.drain().await?;
        if !self.shared.producer_ok() {
            return Err(Error::Delivery(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)));
        }
        let offsets = self.shared.checkpoints(None)?;
        if offsets.count() > 0 {
            self.consumer.commit(&offsets, mode)?;
        }
        Ok(())
    }
}
