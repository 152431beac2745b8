//! The processor's Kafka side: consume points, feed each partition's windows, produce the aggregates of
//! closed windows, and commit input offsets with the checkpoint metadata of `window`.
//!
//! Two delivery modes share this loop:
//! - exactly once (the default): aggregates and input offsets commit together in one Kafka transaction
//!   (`send_offsets_to_transaction` with the consumer's group metadata, so a zombie is fenced). When a
//!   transaction fails, the partitions rewind to their last committed checkpoint, which rebuilds the
//!   windows exactly as they were then;
//! - at least once: offsets are committed once every aggregate produced so far is acknowledged; a
//!   window emitted after the last commit is emitted again, identically, after a crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::prost::Message as _;
use proto::v1::dead_letter::Reason;
use proto::v1::{Aggregate, DeadLetter, Point, Series};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::txn::{Failed, Transactions};
use crate::aggregate::SketchSpec;
use crate::window::{Checkpoint, Outcome, PartitionWindows, WindowRules};

/// The Kafka header on every aggregate that holds the wall-clock time (nanoseconds since the epoch, as
/// decimal text) at which its window closed.
pub const CLOSED_AT_HEADER: &str = "runnel-closed-at-ns";

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Points merged into a window (again after a rewind).
    pub points: AtomicU64,
    /// Points that arrived after their window closed (again after a rewind).
    pub late_points: AtomicU64,
    /// Points too far ahead of the processor's clock (again after a rewind).
    pub future_points: AtomicU64,
    /// Dead letters produced: late, malformed and future points (again after a rewind).
    pub dead_letters: AtomicU64,
    /// Windows closed because their partition had gone quiet and its event time followed the clock.
    pub idle_advances: AtomicU64,
    /// Messages on the points topic that are not a `Point`.
    pub malformed: AtomicU64,
    /// Aggregates produced, including those of transactions that were later aborted.
    pub windows_emitted: AtomicU64,
    /// Input partitions this instance owns now.
    pub assigned_partitions: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Rewinds to the last committed checkpoint after a failed transaction.
    pub rewinds: AtomicU64,
}

/// Marks a producer broken when librdkafka reports a fatal error, so that no offset is committed for
/// output that may never arrive.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerHealth {
    fatal: Arc<AtomicBool>,
}

impl ProducerHealth {
    fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }
}

impl ClientContext for ProducerHealth {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::SeqCst);
            tracing::error!(error = %error, reason, "fatal producer error");
        } else {
            tracing::warn!(error = %error, reason, "producer error; librdkafka recovers");
        }
    }
}

/// Where aggregates go.
pub(crate) enum Output {
    ExactlyOnce(Transactions),
    AtLeastOnce { producer: FutureProducer<ProducerHealth>, health: ProducerHealth },
}

/// State shared by the consume loop and the rebalance callbacks, which run inside `recv`.
/// Where each kind of output goes, and the limits that decide it.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    pub(crate) points_topic: String,
    pub(crate) aggregates_topic: String,
    pub(crate) deadletter_topic: String,
    /// Points further ahead of the wall clock than this are dead-lettered.
    pub(crate) max_future_ns: i64,
    /// Quiet this long, a partition's event time follows the wall clock.
    pub(crate) idle_timeout: Duration,
}

/// How points become windows.
#[derive(Debug, Clone)]
pub(crate) struct Windowing {
    pub(crate) rules: WindowRules,
    pub(crate) allowed_lateness_ns: i64,
    pub(crate) sketch: SketchSpec,
}

impl Windowing {
    fn fresh(&self) -> PartitionWindows {
        PartitionWindows::new(self.allowed_lateness_ns, self.sketch.clone())
    }
}

pub(crate) struct Shared {
    pub(crate) windowing: Windowing,
    pub(crate) points_topic: String,
    pub(crate) routing: Routing,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timeout: Duration,
    output: Mutex<Output>,
    partitions: Mutex<HashMap<i32, PartitionWindows>>,
    /// Set by a rebalance callback that could not restore its partitions; the loop then stops the
    /// service (a restart retries) instead of processing them without their checkpoint.
    broken: Mutex<Option<KafkaError>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("windowing", &self.windowing)
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock means a panic mid-update; the loop then fails and commits nothing more, so reading
/// the inner value is safe.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(windowing: Windowing, routing: Routing, output: Output, timeout: Duration) -> Self {
        Self {
            windowing,
            points_topic: routing.points_topic.clone(),
            routing,
            stats: Arc::default(),
            timeout,
            output: Mutex::new(output),
            partitions: Mutex::default(),
            broken: Mutex::default(),
        }
    }

    /// The offsets and checkpoint metadata of every owned partition that has read something.
    fn checkpoints(&self) -> KafkaResult<TopicPartitionList> {
        let partitions = lock(&self.partitions);
        let mut tpl = TopicPartitionList::new();
        for (&partition, windows) in partitions.iter() {
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

    /// Rebuilds the windows of `owned` partitions from their committed checkpoints; returns the offsets to
    /// read from. Fails rather than guess: starting a partition without its checkpoint would emit windows
    /// again, built from part of their points.
    fn restore<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, owned: &TopicPartitionList) -> KafkaResult<TopicPartitionList> {
        let committed = consumer.committed_offsets(owned.clone(), self.timeout)?;
        let mut positions = TopicPartitionList::new();
        let mut restored_windows = Vec::new();
        for elem in owned.elements_for_topic(&self.points_topic) {
            let partition = elem.partition();
            let found = committed.find_partition(&self.points_topic, partition);
            if let Some(found) = &found {
                found.error()?;
            }
            let offset = found.as_ref().map(|c| c.offset());
            let restored = found.as_ref().and_then(|c| match c.offset() {
                Offset::Offset(resume) => Checkpoint::parse(resume, c.metadata()),
                _ => None,
            });
            // A committed offset without our metadata (reset by an operator) is still where to start.
            let position = match (restored, offset) {
                (Some(checkpoint), _) => Offset::Offset(checkpoint.resume_offset),
                (None, Some(Offset::Offset(at))) => Offset::Offset(at),
                _ => Offset::Beginning,
            };
            positions.add_partition_offset(&self.points_topic, partition, position)?;
            tracing::info!(partition, checkpoint = ?restored, "partition restored");
            let windows = match restored {
                Some(checkpoint) => {
                    PartitionWindows::restore(self.windowing.allowed_lateness_ns, self.windowing.sketch.clone(), checkpoint)
                }
                None => self.windowing.fresh(),
            };
            restored_windows.push((partition, windows));
        }
        let mut partitions = lock(&self.partitions);
        partitions.extend(restored_windows);
        self.stats.assigned_partitions.store(partitions.len() as u64, Ordering::SeqCst);
        Ok(positions)
    }

    fn forget(&self, revoked: &[i32]) {
        let mut partitions = lock(&self.partitions);
        for partition in revoked {
            partitions.remove(partition);
        }
        self.stats.assigned_partitions.store(partitions.len() as u64, Ordering::SeqCst);
    }
}

/// Rebalance handling: before partitions move, make what they produced durable together with their
/// checkpoint; after they arrive, rebuild their windows from the committed checkpoint.
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
        let lost = consumer.assignment_lost();
        let mut output = lock(&shared.output);
        match &mut *output {
            Output::ExactlyOnce(txns) if lost => {
                // Another member may own these partitions already: nothing of ours may commit.
                if let Err(failed) = txns.abort() {
                    tracing::warn!(%failed, "abort on lost partitions failed");
                }
            }
            Output::ExactlyOnce(txns) => {
                let committed = shared.checkpoints().map_err(|err| format!("{err}")).and_then(|offsets| {
                    let group = consumer.group_metadata().ok_or("no group metadata")?;
                    txns.commit(&offsets, &group).map_err(|failed| failed.to_string())
                });
                match committed {
                    Ok(()) => shared.stats.transactions.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        tracing::warn!(why, "commit on revoke failed; the next owner resumes from the last commit");
                        0
                    }
                };
            }
            Output::AtLeastOnce { producer, health } => {
                // Everything emitted so far must be acknowledged before its input offsets are committed.
                let flushed = producer.flush(shared.timeout);
                if lost || flushed.is_err() || health.is_fatal() {
                    tracing::warn!(partitions = ?revoked, lost, "revoked without commit; the next owner replays");
                } else {
                    match shared.checkpoints() {
                        Ok(offsets) if offsets.count() > 0 => {
                            if let Err(err) = consumer.commit(&offsets, CommitMode::Sync) {
                                tracing::warn!(error = %err, "commit on revoke failed; the next owner replays");
                            }
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "checkpoint on revoke failed"),
                    }
                }
            }
        }
        drop(output);
        shared.forget(&revoked);
        tracing::info!(partitions = ?revoked, lost, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        // The assignment itself positions each partition at its committed offset; only the windows need
        // rebuilding.
        if let Err(err) = self.shared.restore(consumer, tpl) {
            tracing::error!(error = %err, "partitions could not be restored; stopping");
            *lock(&self.shared.broken) = Some(err);
        }
    }
}

pub(crate) type PointConsumer = StreamConsumer<RebalanceContext>;

/// The consume-aggregate-produce loop.
pub(crate) struct Pipeline {
    pub(crate) consumer: PointConsumer,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commit_interval: Duration,
    pending: Vec<DeliveryFuture>,
    arrivals: HashMap<i32, Arrival>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("shared", &self.shared).finish_non_exhaustive()
    }
}

/// One record for the output topics.
#[derive(Debug)]
enum Out {
    Aggregate(Box<Aggregate>),
    Dead(Box<DeadLetter>),
}

/// The latest event time a point may carry (year 2262 is far, but windows near i64::MAX overflow).
const MAX_TIMESTAMP_NS: i64 = i64::MAX / 2;

/// Wall-clock time in nanoseconds since the epoch.
fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}

/// When a partition last received a point, and its event time then.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    at: Instant,
    max_event_ns: i64,
}

/// Merges one message into its partition's windows; returns the windows it closed and, for a point
/// it cannot use, the dead letter.
fn handle(shared: &Shared, arrivals: &mut HashMap<i32, Arrival>, message: &BorrowedMessage<'_>) -> Vec<Out> {
    let stats = &shared.stats;
    let (partition, offset) = (message.partition(), message.offset());
    let dead = |reason: Reason, detail: String, point: Option<Point>| DeadLetter {
        reason: reason as i32,
        detail,
        service: "processor".to_owned(),
        source_topic: shared.points_topic.clone(),
        source_partition: partition,
        source_offset: offset,
        raw: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        point,
        refused_at_ns: now_ns(),
        ..DeadLetter::default()
    };
    let mut partitions = lock(&shared.partitions);
    let Some(windows) = partitions.get_mut(&partition) else {
        // Only between a revoke and the queue's purge: the partition belongs to another member now.
        tracing::debug!(partition, offset, "message of a partition not owned; skipped");
        return Vec::new();
    };
    // A record that no window takes is dead-lettered once: a replay of it from before the checkpoint was
    // dead-lettered already.
    let mut refuse = |reason: Reason, detail: String, point: Option<Point>| {
        if windows.skip(offset) {
            return Vec::new();
        }
        tracing::warn!(partition, offset, detail, "dead-lettered");
        vec![Out::Dead(Box::new(dead(reason, detail, point)))]
    };
    let point = match message.payload().map(Point::decode) {
        Some(Ok(point)) => point,
        Some(Err(err)) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return refuse(Reason::Malformed, format!("not a runnel.v1.Point: {err}"), None);
        }
        None => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return refuse(Reason::Malformed, "empty message".to_owned(), None);
        }
    };
    let (ts, value) = (point.timestamp_ns, point.value);
    // The points topic may be written by other producers than the collector: the rules that keep the
    // arithmetic sound are checked again.
    if !value.is_finite() || !(0..=MAX_TIMESTAMP_NS).contains(&ts) {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        let detail = format!("value {value} must be finite and timestamp_ns {ts} within [0, {MAX_TIMESTAMP_NS}]");
        return refuse(Reason::Invalid, detail, Some(point));
    }
    // "Ahead" is measured from the record's Kafka timestamp, not this clock, so that a replay judges
    // the point as its first reading did.
    let written_ns = message.timestamp().to_millis().map_or_else(now_ns, |ms| ms.saturating_mul(1_000_000));
    let ahead = ts.saturating_sub(written_ns);
    if ahead > shared.routing.max_future_ns {
        stats.future_points.fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "timestamp_ns {ts} is {} ahead of the time it was written, beyond the allowed {}",
            humantime::format_duration(Duration::from_nanos(u64::try_from(ahead).unwrap_or(0))),
            humantime::format_duration(Duration::from_nanos(u64::try_from(shared.routing.max_future_ns).unwrap_or(0))),
        );
        return refuse(Reason::Future, detail, Some(point));
    }
    let key = point.series_key();
    let kind = shared.windowing.rules.kind_for(&point.metric);
    let mut out = Vec::new();
    let kept = point.clone();
    let series = || Series { metric: point.metric, tags: point.tags };
    match windows.push(&key, series, kind, ts, value, offset) {
        Outcome::Accepted => {
            stats.points.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Late { window_start_ns, window_end_ns, watermark_ns } => {
            stats.late_points.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(partition, offset, series = %key, timestamp_ns = ts, window_end_ns, watermark_ns, "late point dead-lettered");
            let detail = format!(
                "timestamp_ns {ts} falls in the window [{window_start_ns}, {window_end_ns}), closed when the watermark reached {watermark_ns}"
            );
            out.push(Out::Dead(Box::new(DeadLetter {
                window_start_ns,
                window_end_ns,
                watermark_ns,
                ..dead(Reason::Late, detail, Some(kept))
            })));
        }
        Outcome::Replayed => {}
    }
    if let Some(max_event_ns) = windows.max_event() {
        arrivals.insert(partition, Arrival { at: Instant::now(), max_event_ns });
    }
    out.extend(windows.close_ready().into_iter().map(|a| Out::Aggregate(Box::new(a))));
    out
}

/// How long to wait for room in a full producer queue before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

impl Pipeline {
    pub(crate) fn new(consumer: PointConsumer, shared: Arc<Shared>, commit_interval: Duration) -> Self {
        Self { consumer, shared, commit_interval, pending: Vec::new(), arrivals: HashMap::new() }
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
                _ = tick.tick() => {
                    for out in self.advance_quiet_partitions() {
                        if !self.emit(out).await? {
                            break;
                        }
                    }
                    self.commit().await?;
                }
                message = self.consumer.recv() => {
                    let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
                    if let Some(err) = lock(&self.shared.broken).take() {
                        return Err(err.into());
                    }
                    let outs = handle(&self.shared, &mut self.arrivals, &message);
                    for out in outs {
                        if !self.emit(out).await? {
                            break;
                        }
                    }
                }
            }
        }
        self.commit().await?;
        self.consumer.unsubscribe();
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Moves the event time of every partition quiet for longer than the idle timeout forward by the
    /// wall-clock time since its last point; returns the windows that closes.
    fn advance_quiet_partitions(&mut self) -> Vec<Out> {
        let idle_timeout = self.shared.routing.idle_timeout;
        let mut partitions = lock(&self.shared.partitions);
        let mut out = Vec::new();
        for (partition, windows) in partitions.iter_mut() {
            let Some(arrival) = self.arrivals.get(partition) else { continue };
            let quiet = arrival.at.elapsed();
            if quiet < idle_timeout || windows.open_windows() == 0 {
                continue;
            }
            let quiet_ns = i64::try_from(quiet.as_nanos()).unwrap_or(i64::MAX);
            windows.advance(arrival.max_event_ns.saturating_add(quiet_ns));
            let closed = windows.close_ready();
            self.shared.stats.idle_advances.fetch_add(closed.len() as u64, Ordering::Relaxed);
            out.extend(closed.into_iter().map(|a| Out::Aggregate(Box::new(a))));
        }
        out
    }

    /// Sends one record. `Ok(false)` means the transaction failed and the partitions were rewound: the
    /// caller drops the rest of what it was emitting, which the replay produces again.
    async fn emit(&mut self, out: Out) -> Result<bool> {
        let shared = Arc::clone(&self.shared);
        let routing = &shared.routing;
        let (topic, key, payload) = match &out {
            Out::Aggregate(aggregate) => (
                &routing.aggregates_topic,
                aggregate.series.as_ref().map(Series::key).unwrap_or_default(),
                aggregate.encode_to_vec(),
            ),
            Out::Dead(dead) => (
                &routing.deadletter_topic,
                dead.point.as_ref().map(Point::series_key).unwrap_or_default(),
                dead.encode_to_vec(),
            ),
        };
        // When the window closed, so that a reader can tell how long its result took to become visible.
        let closed_at = now_ns().to_string();
        loop {
            let mut record = FutureRecord::to(topic.as_str()).key(key.as_str()).payload(payload.as_slice());
            if matches!(out, Out::Aggregate(_)) {
                record = record.headers(OwnedHeaders::new().insert(Header { key: CLOSED_AT_HEADER, value: Some(&closed_at) }));
            }
            let sent = match &mut *lock(&self.shared.output) {
                Output::ExactlyOnce(txns) => txns.send(record),
                Output::AtLeastOnce { producer, .. } => {
                    producer.send_result(record).map(|delivery| self.pending.push(delivery)).map_err(|(err, _)| err)
                }
            };
            match sent {
                Ok(()) => {
                    let counter = match out {
                        Out::Aggregate(_) => &self.shared.stats.windows_emitted,
                        Out::Dead(_) => &self.shared.stats.dead_letters,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                // The local queue is full: give the producer time to deliver, then try again.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    } else {
                        self.drain().await?;
                    }
                }
                Err(err) => {
                    let failed = match &mut *lock(&self.shared.output) {
                        // A send refused inside a transaction (say, after a delivery failed while a broker
                        // was away) dooms the transaction, not the service.
                        Output::ExactlyOnce(txns) => txns.fail(err),
                        Output::AtLeastOnce { .. } => return Err(Error::Delivery(err)),
                    };
                    tracing::warn!(%failed, "send failed; rewinding to the last committed checkpoint");
                    self.rewind()?;
                    return Ok(false);
                }
            }
        }
    }

    async fn drain(&mut self) -> Result<()> {
        plumbing::kafka::await_deliveries(self.pending.drain(..)).await.map_err(Error::Delivery)
    }

    /// Makes what was produced so far durable together with every owned partition's checkpoint.
    async fn commit(&mut self) -> Result<()> {
        let exactly_once = matches!(&*lock(&self.shared.output), Output::ExactlyOnce(_));
        if !exactly_once {
            self.drain().await?;
            if let Output::AtLeastOnce { health, .. } = &*lock(&self.shared.output)
                && health.is_fatal() {
                    return Err(Error::Delivery(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)));
                }
            let offsets = self.shared.checkpoints()?;
            if offsets.count() > 0 {
                self.consumer.commit(&offsets, CommitMode::Sync)?;
            }
            return Ok(());
        }
        // Transactional calls block for up to their deadline: keep them off the async workers.
        let failed = tokio::task::block_in_place(|| -> Result<Option<Failed>> {
            let mut output = lock(&self.shared.output);
            let Output::ExactlyOnce(txns) = &mut *output else { return Ok(None) };
            if !txns.is_open() {
                return Ok(None);
            }
            let offsets = self.shared.checkpoints()?;
            let group = self.consumer.group_metadata().ok_or(Error::Kafka(KafkaError::NoMessageReceived))?;
            match txns.commit(&offsets, &group) {
                Ok(()) => {
                    self.shared.stats.transactions.fetch_add(1, Ordering::Relaxed);
                    Ok(None)
                }
                Err(failed) => Ok(Some(failed)),
            }
        })?;
        if let Some(failed) = failed {
            tracing::warn!(%failed, "transaction failed; rewinding to the last committed checkpoint");
            self.rewind()?;
        }
        Ok(())
    }

    /// Puts every owned partition back to its last committed checkpoint: windows rebuilt, reading resumed
    /// from the checkpoint's offset. Used after a transaction that did not commit.
    fn rewind(&self) -> Result<()> {
        let owned = self.consumer.assignment()?;
        let positions = tokio::task::block_in_place(|| self.shared.restore(&self.consumer, &owned))?;
        if positions.count() > 0 {
            // seek_partitions reports each partition's failure inside the list it returns.
            let sought = self.consumer.seek_partitions(positions, self.shared.timeout)?;
            for elem in sought.elements() {
                elem.error()?;
            }
        }
        self.shared.stats.rewinds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
