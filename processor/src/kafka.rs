//! The processor's Kafka side: consume points, feed each partition's windows, produce the aggregates of
//! closed windows, checkpoint the open windows to the changelog topic, and commit input offsets with the
//! checkpoint metadata of `window`.
//!
//! Changelog partition p holds the open windows of points partition p. A partition's new owner (after a
//! crash, a rebalance or a restart) reads its changelog partition to the end its last commit recorded,
//! and resumes reading points right after the last committed offset: nothing is read twice.
//!
//! Two delivery modes share this loop:
//! - exactly once (the default): aggregates, dead letters, changelog records and input offsets commit
//!   together in one Kafka transaction (`send_offsets_to_transaction` with the consumer's group
//!   metadata, so a zombie is fenced). When a transaction fails, the partitions rewind to their last
//!   commit: windows restored from the changelog, reading resumed from the committed offset;
//! - at least once: offsets are committed once every record produced so far is acknowledged; after a
//!   crash, what was read since the last commit is read again, so a window may be emitted twice and the
//!   points between the changelog's acknowledgement and the offset commit may count twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::prost::Message as _;
use proto::v1::dead_letter::Reason;
use proto::v1::{Aggregate, DeadLetter, Point, Series, WindowState};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionListElem;
use rdkafka::{Offset, TopicPartitionList};

use parking_lot::Mutex;

use crate::aggregate::SketchSpec;
use crate::error::{Error, Result};
use opentelemetry::trace::SpanKind;
use plumbing::ops::{KafkaStats, Seconds};
use plumbing::trace::{Attribute, TraceContext};
use plumbing::txn::{Failed, ProducerHealth, Transactions, settled};
use crate::window::{Change, Checkpoint, Outcome, PartitionWindows, Tombstones, WindowRules};

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
    /// Commits made before the regular tick, for closed windows (see `plumbing::txn::CommitSchedule`).
    pub early_commits: AtomicU64,
    /// Rewinds to the last committed checkpoint after a failed transaction.
    pub rewinds: AtomicU64,
    /// Changelog records produced (window states and tombstones), including aborted ones.
    pub changelog_records: AtomicU64,
    /// Open windows read back from the changelog when partitions were assigned (or rewound).
    pub restored_windows: AtomicU64,
    /// Wall-clock time spent committing (changelog writes, flush, offsets, commit), in microseconds.
    pub commit_micros: AtomicU64,
    /// Assignments taken over and restored (an empty one counts): the first makes the processor ready.
    pub assignments: AtomicU64,
}

impl Stats {
    /// One line with the counters that tell whether the processor moves: an operator (or a test's log
    /// tail) sees at once whether points, windows and transactions still advance.
    fn log_progress(&self) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        tracing::info!(
            partitions = get(&self.assigned_partitions),
            points = get(&self.points),
            windows = get(&self.windows_emitted),
            late = get(&self.late_points),
            transactions = get(&self.transactions),
            rewinds = get(&self.rewinds),
            "progress"
        );
    }
}

/// Where aggregates go.
pub(crate) enum Output {
    ExactlyOnce(Transactions),
    AtLeastOnce { producer: FutureProducer<ProducerHealth>, health: ProducerHealth },
}

impl Output {
    /// Sends one record: inside the open transaction, or on its own.
    fn send(&mut self, record: FutureRecord<'_, str, [u8]>) -> Result<DeliveryFuture, KafkaError> {
        match self {
            Self::ExactlyOnce(txns) => txns.send(record),
            Self::AtLeastOnce { producer, .. } => producer.send_result(record).map_err(|(err, _)| err),
        }
    }
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The transaction is gone (aborted, or fenced by a fresh producer): rewind to the last commit.
    #[error("transaction {0}")]
    Failed(Failed),
    /// At least once, or outside a transaction: the service stops.
    #[error(transparent)]
    Fatal(Error),
}

/// Sends the record `make` builds, waiting (blocking) for room while the producer's queue is full,
/// until `deadline`.
fn send_blocking<'a>(
    output: &mut Output,
    make: impl Fn() -> FutureRecord<'a, str, [u8]>,
    deadline: Instant,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match output.send(make()) {
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) if Instant::now() < deadline => {
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            sent => return sent,
        }
    }
}

/// Where each kind of output goes, and the limits that decide it.
#[derive(Debug, Clone)]
pub(crate) struct Routing {
    pub(crate) points_topic: String,
    pub(crate) aggregates_topic: String,
    pub(crate) deadletter_topic: String,
    pub(crate) changelog_topic: String,
    /// Points further ahead of the wall clock than this are dead-lettered.
    pub(crate) max_future_ns: i64,
    /// Quiet this long, a partition's event time follows the wall clock.
    pub(crate) idle_timeout: Duration,
}

/// How points become windows.
#[derive(Debug)]
pub(crate) struct Windowing {
    /// Replaced whole by a reload of the windows file.
    pub(crate) rules: RwLock<WindowRules>,
    pub(crate) allowed_lateness_ns: i64,
    pub(crate) sketch: SketchSpec,
}

/// State shared by the consume loop and the rebalance callbacks, which run inside `recv`. Its locks
/// are eventually fair: the loop retakes `partitions` for every message, and a metrics scrape (which
/// reads the watermarks) must not wait behind it for seconds.
pub(crate) struct Shared {
    pub(crate) windowing: Windowing,
    pub(crate) points_topic: String,
    pub(crate) changelog_topic: String,
    pub(crate) routing: Routing,
    pub(crate) stats: Arc<Stats>,
    pub(crate) timeout: Duration,
    /// How long a restore keeps trying.
    pub(crate) restore_timeout: Duration,
    /// A consumer's settings for reading the changelog (read_committed, partition EOF events).
    changelog_reader: ClientConfig,
    output: Mutex<Output>,
    partitions: Mutex<HashMap<i32, PartitionWindows>>,
    /// At least once: deliveries to check before the next offset commit.
    pending: Mutex<Vec<DeliveryFuture>>,
    /// When each owned partition last received a point (or was restored), for the idle advance.
    arrivals: Mutex<HashMap<i32, Arrival>>,
    /// Set once output was lost (at least once): no offset may be committed after it, not even by the
    /// revoke that closing the consumer runs.
    poisoned: AtomicBool,
    /// Set by a rebalance callback that could not restore its partitions; the loop then stops the
    /// service (a restart retries) instead of processing them without their checkpoint.
    broken: Mutex<Option<Error>>,
    /// When each aggregate not yet committed was sent: its window's close-to-commit latency is
    /// observed when the commit succeeds (dropped with a transaction that did not).
    emitted_at: Mutex<Vec<Instant>>,
    pub(crate) close_to_commit: Seconds,
    pub(crate) kafka_stats: KafkaStats,
    /// The span of each open window a sampled trace reached (by series key and window start), from
    /// its first traced point until its aggregate is sent; only sampled points add one.
    traced: Mutex<HashMap<String, BTreeMap<i64, TraceContext>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("windowing", &self.windowing)
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

/// Reads the `changelog` partitions of `wanted` (partition, end): the latest window state of each key
/// that no tombstone removed (see `plumbing::changelog::read`).
fn read_changelog(
    reader: &ClientConfig,
    changelog: &str,
    wanted: &[(i32, i64)],
    timeout: Duration,
) -> Result<HashMap<i32, BTreeMap<String, WindowState>>> {
    let logs = plumbing::changelog::read(reader, changelog, wanted, timeout).map_err(|err| match err {
        plumbing::changelog::ReadError::Kafka(err) => Error::Kafka(err),
        plumbing::changelog::ReadError::Timeout(detail) => Error::RestoreTimeout(detail),
    })?;
    let mut states: HashMap<i32, BTreeMap<String, WindowState>> = HashMap::new();
    for (partition, log) in logs {
        let decoded = states.entry(partition).or_default();
        for (key, bytes) in log {
            let state = WindowState::decode(bytes.as_slice())
                .map_err(|err| Error::Restore(format!("{changelog}[{partition}] key {key}: {err}")))?;
            decoded.insert(key, state);
        }
    }
    Ok(states)
}

impl Shared {
    pub(crate) fn new(
        windowing: Windowing,
        routing: Routing,
        output: Output,
        changelog_reader: ClientConfig,
        timeout: Duration,
        restore_timeout: Duration,
        kafka_stats: KafkaStats,
    ) -> Self {
        Self {
            windowing,
            points_topic: routing.points_topic.clone(),
            changelog_topic: routing.changelog_topic.clone(),
            routing,
            stats: Arc::default(),
            timeout,
            restore_timeout,
            changelog_reader,
            output: Mutex::new(output),
            partitions: Mutex::default(),
            pending: Mutex::default(),
            arrivals: Mutex::default(),
            poisoned: AtomicBool::new(false),
            broken: Mutex::default(),
            emitted_at: Mutex::default(),
            close_to_commit: Seconds::default(),
            kafka_stats,
            traced: Mutex::default(),
        }
    }

    /// The span of the window of `key` starting at `start_ns`, if a sampled trace reached it; costs an
    /// uncontended lock and nothing else while no trace is open.
    fn take_traced(&self, key: &str, start_ns: i64) -> Option<TraceContext> {
        let mut traced = self.traced.lock();
        let windows = traced.get_mut(key)?;
        let span = windows.remove(&start_ns);
        if windows.is_empty() {
            traced.remove(key);
        }
        span
    }

    /// Each owned partition's watermark (event time, in nanoseconds), once it has one.
    pub(crate) fn watermarks(&self) -> Vec<(i32, i64)> {
        let partitions = self.partitions.lock();
        let mut watermarks: Vec<(i32, i64)> = partitions.iter().filter_map(|(p, w)| Some((*p, w.watermark()?))).collect();
        watermarks.sort_unstable();
        watermarks
    }

    /// Sends every owned partition's changelog changes since the last call; returns their deliveries.
    fn send_changes(&self, output: &mut Output, tombstones: Tombstones) -> Result<Vec<DeliveryFuture>, KafkaError> {
        let deadline = Instant::now() + self.timeout;
        let mut partitions = self.partitions.lock();
        let mut deliveries = Vec::new();
        for (&partition, windows) in partitions.iter_mut() {
            for change in windows.take_changes(tombstones) {
                let (key, payload) = match &change {
                    Change::Put { key, state } => (key, Some(state.encode_to_vec())),
                    Change::Delete { key } => (key, None),
                };
                let make = || {
                    let record = FutureRecord::to(&self.changelog_topic).partition(partition).key(key.as_str());
                    match &payload {
                        Some(bytes) => record.payload(bytes.as_slice()),
                        None => record, // a tombstone
                    }
                };
                deliveries.push(send_blocking(output, make, deadline)?);
                self.stats.changelog_records.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(deliveries)
    }

    /// Records how far each changelog partition was written, once those records are acknowledged.
    fn changelog_written(&self, ends: &HashMap<i32, i64>) {
        let mut partitions = self.partitions.lock();
        for (partition, end) in ends {
            if let Some(windows) = partitions.get_mut(partition) {
                windows.changelog_written(*end);
            }
        }
    }

    /// Waits for every delivery of `changelog` (and, at least once, every pending one) and records the
    /// changelog's new ends: what must hold before input offsets are committed. (Not a producer flush:
    /// rdkafka's flush polls in steps of 100 ms when a background thread serves the events, so it
    /// would add up to 100 ms to every commit; a delivery future resolves as soon as its ack arrives.)
    fn settle(&self, changelog: Vec<DeliveryFuture>) -> Result<(), KafkaError> {
        let pending: Vec<DeliveryFuture> = self.pending.lock().drain(..).collect();
        settled(pending)?;
        let ends = settled(changelog)?;
        self.changelog_written(&ends);
        Ok(())
    }

    /// The offsets and checkpoint metadata of every owned partition that has read something.
    fn checkpoints(&self) -> KafkaResult<TopicPartitionList> {
        let partitions = self.partitions.lock();
        let mut tpl = TopicPartitionList::new();
        for (&partition, windows) in partitions.iter() {
            let checkpoint = windows.checkpoint();
            if checkpoint.next_offset == 0 && checkpoint.max_event_ns.is_none() {
                continue; // nothing read yet: keep whatever is committed
            }
            let mut elem = tpl.add_partition(&self.points_topic, partition);
            elem.set_offset(Offset::Offset(checkpoint.next_offset))?;
            elem.set_metadata(checkpoint.metadata());
        }
        Ok(tpl)
    }

    /// Rebuilds the windows of `owned` partitions from their committed checkpoints and their changelog;
    /// returns the offsets to read from. Fails rather than guess: starting a partition without its
    /// windows would emit them again, built from part of their points.
    /// Retries while the failure is transient (a broker failing over leaves a partition without a leader
    /// for several seconds), for up to the restore timeout.
    fn restore<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, owned: &TopicPartitionList) -> Result<TopicPartitionList> {
        let deadline = Instant::now() + self.restore_timeout;
        loop {
            match self.try_restore(consumer, owned) {
                Err(err) if err.is_transient() && Instant::now() + RESTORE_BACKOFF < deadline => {
                    tracing::warn!(error = %err, "restore failed; trying again");
                    std::thread::sleep(RESTORE_BACKOFF);
                }
                restored => return restored,
            }
        }
    }

    fn try_restore<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, owned: &TopicPartitionList) -> Result<TopicPartitionList> {
        let committed = consumer.committed_offsets(owned.clone(), self.timeout)?;
        let mut plans = Vec::new();
        for elem in owned.elements_for_topic(&self.points_topic) {
            let partition = elem.partition();
            let found = committed.find_partition(&self.points_topic, partition);
            if let Some(found) = &found {
                found.error()?;
            }
            let offset = found.as_ref().map(TopicPartitionListElem::offset);
            // Ours only if the metadata parses and names the committed offset itself: an offset moved by
            // an operator (a reset) keeps the old metadata or none.
            let checkpoint = found.as_ref().and_then(|c| match c.offset() {
                Offset::Offset(at) => plumbing::changelog::metadata(c).as_deref().and_then(Checkpoint::parse).filter(|cp| cp.next_offset == at),
                _ => None,
            });
            plans.push((partition, checkpoint, offset));
        }
        let wanted: Vec<(i32, i64)> = plans.iter().map(|(p, cp, _)| (*p, cp.map_or(0, |cp| cp.changelog_end))).collect();
        let mut logs = read_changelog(&self.changelog_reader, &self.changelog_topic, &wanted, self.timeout)?;
        let mut positions = TopicPartitionList::new();
        let mut restored_windows = Vec::new();
        let (lateness, sketch) = (self.windowing.allowed_lateness_ns, &self.windowing.sketch);
        for (partition, checkpoint, offset) in plans {
            let states = logs.remove(&partition).unwrap_or_default();
            let found = states.len();
            let (windows, position) = match checkpoint {
                Some(checkpoint) => {
                    let windows = PartitionWindows::restore(lateness, sketch.clone(), checkpoint, states)
                        .map_err(|err| Error::Restore(format!("{}[{partition}]: {err}", self.changelog_topic)))?;
                    (windows, Offset::Offset(checkpoint.next_offset))
                }
                None => {
                    if found > 0 {
                        tracing::warn!(partition, windows = found, "committed offset was moved outside the processor; its windows are dropped");
                    }
                    let position = match offset {
                        Some(Offset::Offset(at)) => Offset::Offset(at),
                        _ => Offset::Beginning,
                    };
                    (PartitionWindows::discard(lateness, sketch.clone(), states.into_keys()), position)
                }
            };
            tracing::info!(partition, ?checkpoint, windows = windows.open_windows(), "partition restored");
            self.stats.restored_windows.fetch_add(windows.open_windows() as u64, Ordering::Relaxed);
            positions.add_partition_offset(&self.points_topic, partition, position)?;
            restored_windows.push((partition, windows));
        }
        // A restored partition is as quiet as a point arriving now would make it: if nothing more comes,
        // its windows close through the idle advance like any other's.
        let mut arrivals = self.arrivals.lock();
        for (partition, windows) in &restored_windows {
            match windows.max_event() {
                Some(max_event_ns) => arrivals.insert(*partition, Arrival { at: Instant::now(), max_event_ns }),
                None => arrivals.remove(partition),
            };
        }
        drop(arrivals);
        let mut partitions = self.partitions.lock();
        partitions.extend(restored_windows);
        self.stats.assigned_partitions.store(partitions.len() as u64, Ordering::SeqCst);
        Ok(positions)
    }

    /// Makes everything produced so far durable together with every owned partition's changelog
    /// changes and checkpoint: one transaction (exactly once), or acknowledged output then an offset
    /// commit (at least once). With [`Tombstones::Later`], closed windows' tombstones wait.
    fn commit_all<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, tombstones: Tombstones) -> Result<(), CommitError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(CommitError::Fatal(Error::Delivery(KafkaError::Canceled)));
        }
        let started = Instant::now();
        let committed = self.commit_locked(consumer, tombstones);
        if let Err(CommitError::Fatal(_)) = &committed {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        let emitted = std::mem::take(&mut *self.emitted_at.lock());
        if committed.is_ok() {
            let now = Instant::now();
            if let Some(oldest) = emitted.first() {
                // How long the oldest window waited for its commit to start, and for it to end.
                let (queued, visible) = (started.saturating_duration_since(*oldest), now.duration_since(*oldest));
                tracing::debug!(windows = emitted.len(), queued_ms = queued.as_millis(), visible_ms = visible.as_millis(), "windows committed");
            }
            for at in emitted {
                self.close_to_commit.observe(now.duration_since(at));
            }
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
        committed
    }

    fn commit_locked<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, tombstones: Tombstones) -> Result<(), CommitError> {
        let mut output = self.output.lock();
        let started = Instant::now();
        let prepared = self.send_changes(&mut output, tombstones);
        let sent = Instant::now();
        match &mut *output {
            Output::ExactlyOnce(txns) => {
                if !txns.is_open() {
                    return prepared.map(drop).map_err(|err| CommitError::Failed(txns.fail(err)));
                }
                let changes = prepared.as_ref().map_or(0, Vec::len);
                let offsets = prepared
                    .and_then(|changelog| self.settle(changelog))
                    .and_then(|()| self.checkpoints());
                let offsets = offsets.map_err(|err| CommitError::Failed(txns.fail(err)))?;
                let settled = Instant::now();
                let group = consumer.group_metadata().ok_or(CommitError::Fatal(Error::Kafka(KafkaError::NoMessageReceived)))?;
                txns.commit(&offsets, group).map_err(CommitError::Failed)?;
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                // Where a commit's time goes: queueing the changelog, waiting for its acks, the commit itself.
                tracing::debug!(
                    changes,
                    send_ms = (sent - started).as_millis(),
                    settle_ms = (settled - sent).as_millis(),
                    commit_ms = settled.elapsed().as_millis(),
                    "transaction committed"
                );
                Ok(())
            }
            Output::AtLeastOnce { health, .. } => {
                let fatal = |err: KafkaError| CommitError::Fatal(Error::Delivery(err));
                let changelog = prepared.map_err(fatal)?;
                self.settle(changelog).map_err(fatal)?;
                if health.is_fatal() {
                    return Err(fatal(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)));
                }
                let offsets = self.checkpoints().map_err(|err| CommitError::Fatal(err.into()))?;
                if offsets.count() > 0 {
                    consumer.commit(&offsets, CommitMode::Sync).map_err(|err| CommitError::Fatal(err.into()))?;
                }
                Ok(())
            }
        }
    }

    fn forget(&self, revoked: &[i32]) {
        let mut arrivals = self.arrivals.lock();
        for partition in revoked {
            arrivals.remove(partition);
        }
        drop(arrivals);
        // Traced windows of revoked partitions close elsewhere, untraced.
        self.traced.lock().clear();
        let mut partitions = self.partitions.lock();
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

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.shared.kafka_stats.record(statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let shared = &self.shared;
        let (revoked, lost): (Vec<i32>, bool) = match rebalance {
            Rebalance::Revoke(tpl) => {
                (tpl.elements_for_topic(&shared.points_topic).iter().map(|e| e.partition()).collect(), consumer.assignment_lost())
            }
            // librdkafka unassigns everything after a rebalance error: treat it as a loss.
            Rebalance::Error(err) => {
                tracing::warn!(error = %err, "rebalance failed; every partition is dropped");
                (shared.partitions.lock().keys().copied().collect(), true)
            }
            Rebalance::Assign(_) => return,
        };
        let abort = || {
            if let Output::ExactlyOnce(txns) = &mut *shared.output.lock()
                && let Err(failed) = txns.abort() {
                    tracing::warn!(%failed, "abort failed; the broker times the transaction out");
                }
        };
        if lost {
            // Another member may own these partitions already: nothing of ours may commit.
            abort();
        } else if let Err(err) = shared.commit_all(consumer, Tombstones::All) {
            tracing::warn!(error = %err, "commit on revoke failed; the next owner resumes from the last commit");
            // Whatever the open transaction holds belongs to partitions that are going: never commit it.
            abort();
        }
        shared.forget(&revoked);
        tracing::info!(partitions = ?revoked, lost, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        // The assignment itself positions each partition at its committed offset; only the windows need
        // rebuilding.
        match self.shared.restore(consumer, tpl) {
            Ok(_) => {
                self.shared.stats.assignments.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => {
                tracing::error!(error = %err, "partitions could not be restored; stopping");
                *self.shared.broken.lock() = Some(err);
            }
        }
    }
}

pub(crate) type PointConsumer = StreamConsumer<RebalanceContext>;

/// The consume-aggregate-produce loop.
pub(crate) struct Pipeline {
    pub(crate) consumer: PointConsumer,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commit_interval: Duration,
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
pub(crate) fn now_ns() -> i64 {
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
fn handle(shared: &Shared, message: &BorrowedMessage<'_>) -> Vec<Out> {
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
    let mut partitions = shared.partitions.lock();
    let Some(windows) = partitions.get_mut(&partition) else {
        // Only between a revoke and the queue's purge: the partition belongs to another member now.
        tracing::debug!(partition, offset, "message of a partition not owned; skipped");
        return Vec::new();
    };
    let mut refuse = |reason: Reason, detail: String, point: Option<Point>| {
        windows.skip(offset);
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
    let kind = shared.windowing.rules.read().unwrap_or_else(PoisonError::into_inner).kind_for(&point.metric);
    let mut out = Vec::new();
    let kept = point.clone();
    let series = || Series { metric: point.metric, tags: point.tags };
    match windows.push(&key, series, kind, ts, value, offset) {
        Outcome::Accepted => {
            stats.points.fetch_add(1, Ordering::Relaxed);
            if let Some(parent) = plumbing::trace::from_kafka(message.headers()) {
                let mut traced = shared.traced.lock();
                let windows = traced.entry(key.clone()).or_default();
                for (start, end) in kind.windows_of(ts) {
                    windows.entry(start).or_insert_with(|| {
                        let attributes = vec![
                            Attribute::new("series", key.clone()),
                            Attribute::new("window_start_ns", start),
                            Attribute::new("window_end_ns", end),
                            Attribute::new("partition", i64::from(partition)),
                            Attribute::new("offset", offset),
                        ];
                        plumbing::trace::child("processor.window", Some(&parent), SpanKind::Consumer, attributes)
                    });
                }
            }
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
    }
    if let Some(max_event_ns) = windows.max_event() {
        shared.arrivals.lock().insert(partition, Arrival { at: Instant::now(), max_event_ns });
    }
    out.extend(windows.close_ready().into_iter().map(|a| Out::Aggregate(Box::new(a))));
    out
}

/// Ends the spans it holds when dropped, however the send ends.
struct EndSpans([Option<TraceContext>; 2]);

impl Drop for EndSpans {
    fn drop(&mut self) {
        for span in self.0.iter().flatten() {
            plumbing::trace::end(span);
        }
    }
}

/// How long to wait before trying a failed restore again.
const RESTORE_BACKOFF: Duration = Duration::from_secs(1);

/// How often the loop logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How long to wait for room in a full producer queue before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

impl Pipeline {
    pub(crate) fn new(consumer: PointConsumer, shared: Arc<Shared>, commit_interval: Duration) -> Self {
        Self { consumer, shared, commit_interval }
    }

    /// Runs until `shutdown`, then commits what is durable and leaves the group.
    pub(crate) async fn run(mut self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.shared.points_topic])?;
        let mut schedule = plumbing::txn::CommitSchedule::new(self.commit_interval);
        let mut last_progress = Instant::now();
        loop {
            // Closed windows go out without waiting for the next tick (see `CommitSchedule`).
            let (drained, overdue) = (schedule.drained(), schedule.overdue());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = overdue => {
                    self.commit_early(&mut schedule).await?;
                }
                () = schedule.tick() => {
                    for out in self.advance_quiet_partitions() {
                        if !self.emit(out).await? {
                            break;
                        }
                    }
                    self.commit(Tombstones::All).await?;
                    schedule.committed();
                    if last_progress.elapsed() >= PROGRESS_EVERY {
                        last_progress = Instant::now();
                        self.shared.stats.log_progress();
                    }
                }
                message = self.consumer.recv() => {
                    let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
                    if let Some(err) = self.shared.broken.lock().take() {
                        return Err(err);
                    }
                    let outs = handle(&self.shared, &message);
                    for out in outs {
                        let closed = matches!(out, Out::Aggregate(_));
                        if !self.emit(out).await? {
                            break;
                        }
                        if closed {
                            schedule.urge();
                        }
                    }
                }
                () = drained => {
                    self.commit_early(&mut schedule).await?;
                }
            }
        }
        self.commit(Tombstones::All).await?;
        self.consumer.unsubscribe();
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Moves the event time of every partition quiet for longer than the idle timeout forward by the
    /// wall-clock time since its last point; returns the windows that closes. A partition with points
    /// still waiting to be read (the processor fell behind, or a fetch is slow) is not quiet: advancing
    /// it would make those points late.
    fn advance_quiet_partitions(&mut self) -> Vec<Out> {
        let idle_timeout = self.shared.routing.idle_timeout;
        let quiet: Vec<(i32, Arrival)> = {
            let partitions = self.shared.partitions.lock();
            let arrivals = self.shared.arrivals.lock();
            arrivals
                .iter()
                .filter(|(p, arrival)| arrival.at.elapsed() >= idle_timeout && partitions.get(p).is_some_and(|w| w.open_windows() > 0))
                .map(|(p, arrival)| (*p, *arrival))
                .collect()
        };
        let mut out = Vec::new();
        for (partition, arrival) in quiet {
            if !self.caught_up(partition) {
                continue;
            }
            let mut partitions = self.shared.partitions.lock();
            let Some(windows) = partitions.get_mut(&partition) else { continue };
            let quiet_ns = i64::try_from(arrival.at.elapsed().as_nanos()).unwrap_or(i64::MAX);
            windows.advance(arrival.max_event_ns.saturating_add(quiet_ns));
            let closed = windows.close_ready();
            self.shared.stats.idle_advances.fetch_add(closed.len() as u64, Ordering::Relaxed);
            out.extend(closed.into_iter().map(|a| Out::Aggregate(Box::new(a))));
        }
        out
    }

    /// Whether this consumer has read `partition` up to its end as the broker sees it now.
    fn caught_up(&self, partition: i32) -> bool {
        let topic = &self.shared.points_topic;
        let consumed = self.consumer.position().ok().and_then(|tpl| match tpl.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => Some(at),
            _ => None,
        });
        // A partition restored and not read since has no consumer position yet: its windows' next offset
        // (the committed one) says how far it got.
        let handled = self.shared.partitions.lock().get(&partition).map(|w| w.checkpoint().next_offset);
        let Some(position) = consumed.max(handled) else { return false };
        // A metadata round trip, made only for a partition that has looked quiet for the idle timeout.
        let end = tokio::task::block_in_place(|| self.consumer.fetch_watermarks(topic, partition, self.shared.timeout));
        match end {
            Ok((_, high)) => position >= high,
            Err(err) => {
                tracing::debug!(error = %err, partition, "end of partition unknown; not advancing it");
                false
            }
        }
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
        // A window a sampled trace reached: its sending joins the trace, and the aggregate carries it on.
        let traced = match &out {
            Out::Aggregate(aggregate) => aggregate.window.as_ref().and_then(|w| shared.take_traced(&key, w.start_ns)),
            Out::Dead(_) => None,
        };
        let emitting = traced.as_ref().map(|window| {
            plumbing::trace::child("processor.emit", Some(window), SpanKind::Producer, vec![Attribute::new("series", key.clone())])
        });
        let traceparent = emitting.as_ref().and_then(plumbing::trace::traceparent);
        let _ended = EndSpans([emitting, traced]);
        // A queue that stays full this long means the producer is stuck (no leader, no coordinator):
        // the send then fails like any other and the transaction rewinds, rather than wait forever.
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let mut record = FutureRecord::to(topic.as_str()).key(key.as_str()).payload(payload.as_slice());
            if matches!(out, Out::Aggregate(_)) {
                let mut headers = OwnedHeaders::new().insert(Header { key: CLOSED_AT_HEADER, value: Some(&closed_at) });
                if let Some(traceparent) = &traceparent {
                    headers = headers.insert(Header { key: plumbing::trace::TRACEPARENT, value: Some(traceparent) });
                }
                record = record.headers(headers);
            }
            let sent = {
                let mut output = self.shared.output.lock();
                let exactly_once = matches!(*output, Output::ExactlyOnce(_));
                output.send(record).map(|delivery| {
                    if !exactly_once {
                        self.shared.pending.lock().push(delivery);
                    }
                })
            };
            match sent {
                Ok(()) => {
                    let counter = match out {
                        Out::Aggregate(_) => {
                            self.shared.emitted_at.lock().push(Instant::now());
                            &self.shared.stats.windows_emitted
                        }
                        Out::Dead(_) => &self.shared.stats.dead_letters,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                // The local queue is full: give the producer time to deliver, then try again.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) if Instant::now() < deadline => {
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err(err) => {
                    let failed = match &mut *self.shared.output.lock() {
                        // A send refused inside a transaction (say, after a delivery failed while a broker
                        // was away) dooms the transaction, not the service.
                        Output::ExactlyOnce(txns) => txns.fail(err),
                        Output::AtLeastOnce { .. } => {
                            self.shared.poisoned.store(true, Ordering::SeqCst);
                            return Err(Error::Delivery(err));
                        }
                    };
                    tracing::warn!(%failed, "send failed; rewinding to the last committed checkpoint");
                    self.rewind()?;
                    return Ok(false);
                }
            }
        }
    }

    /// A commit before the regular tick, for closed windows: only what must go with them (their
    /// tombstones wait for the tick).
    async fn commit_early(&mut self, schedule: &mut plumbing::txn::CommitSchedule) -> Result<()> {
        self.commit(Tombstones::Later).await?;
        schedule.committed();
        self.shared.stats.early_commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes what was produced so far durable together with every owned partition's checkpoint; after
    /// a transaction that did not commit, rewinds to the last one that did.
    async fn commit(&mut self, tombstones: Tombstones) -> Result<()> {
        // Commits block for up to their deadline: keep them off the async workers.
        match tokio::task::block_in_place(|| self.shared.commit_all(&self.consumer, tombstones)) {
            Ok(()) => Ok(()),
            Err(CommitError::Failed(failed)) => {
                tracing::warn!(%failed, "transaction failed; rewinding to the last committed checkpoint");
                self.rewind()
            }
            Err(CommitError::Fatal(err)) => Err(err),
        }
    }

    /// Puts every owned partition back to its last commit: windows restored from the changelog, reading
    /// resumed from the committed offset. Used after a transaction that did not commit.
    fn rewind(&self) -> Result<()> {
        let owned = self.consumer.assignment()?;
        self.shared.partitions.lock().clear();
        // Those aggregates are produced again by the replay; their first sending never became visible.
        self.shared.emitted_at.lock().clear();
        self.shared.traced.lock().clear();
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
