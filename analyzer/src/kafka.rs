//! The analyzer's Kafka side, exactly once: consume aggregates (or, in a second loop of its own, the
//! raw points of the metrics modelled per point), update the models, and commit in one transaction the
//! alert changes, the checkpoints of the series that changed (changelog partition p for input
//! partition p, with the partition's event time) and the input offsets, whose metadata records how
//! far the changelog partition was written.
//!
//! A new owner of a partition (after a crash, a restart or a rebalance) reads its changelog partition
//! to that end, restores its series, and resumes right after the committed offset: an alert published
//! is never published again, and a firing alert stays firing. When a transaction fails, the owned
//! partitions rewind to their last commit the same way.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use plumbing::txn::{Failed, Transactions, settled};
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, Point};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use opentelemetry::trace::SpanKind;
use plumbing::ops::KafkaStats;
use plumbing::trace::Attribute;

use crate::error::{Error, Result};
use crate::state::{Analysis, Input, Observed};

/// Counters of the consumer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input records read (aggregates, or points for the loop of the metrics modelled per point),
    /// replays included.
    pub read: AtomicU64,
    /// Alert changes sent (each commits with its transaction, or is aborted with it).
    pub alerts: AtomicU64,
    /// The same, by the state changed to (indexed by `AlertState`'s number).
    pub alerts_by_state: [AtomicU64; ALERT_STATES],
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Series restored from the changelog.
    pub restored_series: AtomicU64,
    /// Rewinds to the last commit after a failed transaction.
    pub rewinds: AtomicU64,
    /// Input partitions owned now.
    pub partitions: AtomicU64,
    /// Assignments taken over and restored (an empty one counts): the first makes the analyzer ready.
    pub assignments: AtomicU64,
}

/// How many `AlertState`s there are, unspecified included.
pub(crate) const ALERT_STATES: usize = proto::v1::AlertState::NoData as usize + 1;

/// The changelog key holding a partition's event time (no series key starts with a NUL).
const WATERMARK_KEY: &str = "\0watermark";

/// The offset metadata: `runnel-analyzer/1/<changelog end>`.
const METADATA_PREFIX: &str = "runnel-analyzer/1/";

/// What the analyzer tracks of an input partition it owns.
#[derive(Debug, Default)]
struct Owned {
    /// The offset after the last aggregate handled, once one was.
    next_offset: Option<i64>,
    /// How far its changelog partition is written, by the commits so far.
    changelog_end: i64,
    /// Series whose checkpoint the next commit writes.
    dirty: HashSet<String>,
    /// The event time the changelog holds: written again only when it moved, so that an idle
    /// analyzer commits nothing.
    watermark_written: Option<i64>,
}

/// State shared by the consume loop and the rebalance callbacks, which run inside `recv`.
pub(crate) struct Shared {
    pub(crate) analysis: Arc<Mutex<Analysis>>,
    /// What `analysis` reads; fixed, so a record is decoded before the analysis is locked.
    input: Input,
    txns: Mutex<Transactions>,
    owned: Mutex<BTreeMap<i32, Owned>>,
    pub(crate) input_topic: String,
    pub(crate) alerts_topic: String,
    changelog_topic: String,
    changelog_reader: ClientConfig,
    /// The deadline of one Kafka call, and of a restore.
    timeout: Duration,
    pub(crate) stats: Arc<Stats>,
    /// A restore that failed inside a rebalance callback, for the loop to stop on.
    broken: Mutex<Option<Error>>,
    kafka_stats: KafkaStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("input_topic", &self.input_topic).finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The topics and clients the shared state needs.
pub(crate) struct Wiring {
    pub(crate) input_topic: String,
    pub(crate) alerts_topic: String,
    pub(crate) changelog_topic: String,
    pub(crate) changelog_reader: ClientConfig,
    pub(crate) timeout: Duration,
    /// Shared by every loop's consumer, so that one family holds them all.
    pub(crate) kafka_stats: KafkaStats,
}

impl Shared {
    pub(crate) fn new(analysis: Analysis, txns: Transactions, wiring: Wiring) -> Self {
        Self {
            input: analysis.input(),
            analysis: Arc::new(Mutex::new(analysis)),
            txns: Mutex::new(txns),
            owned: Mutex::default(),
            input_topic: wiring.input_topic,
            alerts_topic: wiring.alerts_topic,
            changelog_topic: wiring.changelog_topic,
            changelog_reader: wiring.changelog_reader,
            timeout: wiring.timeout,
            stats: Arc::default(),
            broken: Mutex::default(),
            kafka_stats: wiring.kafka_stats,
        }
    }

    /// Folds one input record into its partition's series; returns the alert changes to send.
    fn handle(&self, message: &BorrowedMessage<'_>) -> Vec<Alert> {
        let (partition, offset) = (message.partition(), message.offset());
        if !lock(&self.owned).contains_key(&partition) {
            // Only between a revoke and the queue's purge: the partition belongs to another member now.
            return Vec::new();
        }
        // Decoded before the analysis is locked: the gRPC service reads it meanwhile.
        let payload = message.payload().unwrap_or_default();
        let observed = match self.input {
            Input::Aggregates => Aggregate::decode(payload).map(|aggregate| lock(&self.analysis).observe(partition, &aggregate)),
            Input::Points => Point::decode(payload).map(|point| lock(&self.analysis).observe_point(partition, &point)),
        };
        let Observed { alerts, changed, .. } = observed.unwrap_or_else(|err| {
            tracing::warn!(partition, offset, error = %err, "not a record of the input topic; skipped");
            Observed::default()
        });
        self.stats.read.fetch_add(1, Ordering::Relaxed);
        if let Some(owned) = lock(&self.owned).get_mut(&partition) {
            owned.next_offset = Some(offset + 1);
            owned.dirty.extend(changed);
        }
        alerts
    }

    /// Sends one alert change inside the open transaction.
    /// `traceparent` continues the trace of the record that changed it.
    fn send_alert(&self, alert: &Alert, traceparent: Option<&str>) -> std::result::Result<(), KafkaError> {
        let payload = alert.encode_to_vec();
        let deadline = Instant::now() + self.timeout;
        let record = || {
            let record = FutureRecord::to(&self.alerts_topic).key(alert.id.as_str()).payload(payload.as_slice());
            match traceparent {
                Some(traceparent) => record.headers(OwnedHeaders::new().insert(Header { key: plumbing::trace::TRACEPARENT, value: Some(traceparent) })),
                None => record,
            }
        };
        lock(&self.txns).send_waiting(record, deadline)?;
        self.stats.alerts.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.stats.alerts_by_state.get(alert.state as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commits, in one transaction, every alert sent so far, the checkpoints of every owned partition's
    /// changed series and event time, and the input offsets.
    fn commit_all<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C) -> std::result::Result<(), Failed> {
        let mut txns = lock(&self.txns);
        let mut owned = lock(&self.owned);
        let deadline = Instant::now() + self.timeout;
        let mut deliveries = Vec::new();
        {
            let analysis = lock(&self.analysis);
            for (&partition, state) in owned.iter_mut() {
                for key in state.dirty.drain() {
                    let Some(bytes) = analysis.checkpoint(&key) else { continue };
                    let make = || FutureRecord::to(&self.changelog_topic).partition(partition).key(key.as_str()).payload(bytes.as_slice());
                    deliveries.push(txns.send_waiting(make, deadline).map_err(|err| txns.fail(err))?);
                }
                if let Some(watermark) = analysis.watermark(partition).filter(|w| state.watermark_written != Some(*w)) {
                    let bytes = watermark.to_be_bytes();
                    let make = || FutureRecord::to(&self.changelog_topic).partition(partition).key(WATERMARK_KEY).payload(&bytes[..]);
                    deliveries.push(txns.send_waiting(make, deadline).map_err(|err| txns.fail(err))?);
                    state.watermark_written = Some(watermark);
                }
            }
        }
        if !txns.is_open() {
            return Ok(());
        }
        let ends = settled(deliveries).map_err(|err| txns.fail(err))?;
        let mut offsets = TopicPartitionList::new();
        for (&partition, state) in owned.iter_mut() {
            if let Some(end) = ends.get(&partition) {
                state.changelog_end = state.changelog_end.max(*end);
            }
            let Some(next) = state.next_offset else { continue };
            let mut elem = offsets.add_partition(&self.input_topic, partition);
            elem.set_offset(Offset::Offset(next)).map_err(|err| txns.fail(err))?;
            elem.set_metadata(format!("{METADATA_PREFIX}{}", state.changelog_end));
        }
        let group = consumer.group_metadata().ok_or_else(|| txns.fail(KafkaError::NoMessageReceived))?;
        txns.commit(&offsets, group)?;
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Restores the series of the `assigned` partitions from their changelog, up to the end their
    /// committed offset's metadata records; returns the committed positions to read from.
    fn restore<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, assigned: &TopicPartitionList) -> Result<TopicPartitionList> {
        let committed = consumer.committed_offsets(assigned.clone(), self.timeout)?;
        let mut plans = Vec::new();
        for elem in committed.elements_for_topic(&self.input_topic) {
            let position = match elem.offset() {
                Offset::Offset(at) => Offset::Offset(at),
                _ => Offset::Beginning,
            };
            let end = plumbing::changelog::metadata(&elem)
                .and_then(|m| m.strip_prefix(METADATA_PREFIX).and_then(|end| end.parse::<i64>().ok()))
                .unwrap_or(0);
            plans.push((elem.partition(), end, position));
        }
        let wanted: Vec<(i32, i64)> = plans.iter().map(|(p, end, _)| (*p, *end)).collect();
        let logs = plumbing::changelog::read(&self.changelog_reader, &self.changelog_topic, &wanted, self.timeout).map_err(|err| match err {
            plumbing::changelog::ReadError::Kafka(err) => Error::Kafka(err),
            plumbing::changelog::ReadError::Timeout(detail) => Error::Restore(detail),
        })?;
        let mut positions = TopicPartitionList::new();
        // Locks in the order commit_all takes them: owned, then analysis.
        let mut owned = lock(&self.owned);
        let mut analysis = lock(&self.analysis);
        for (partition, end, position) in plans {
            let (mut restored, mut watermark) = (0u64, None);
            for (key, bytes) in logs.get(&partition).into_iter().flatten() {
                if key == WATERMARK_KEY {
                    let ns = <[u8; 8]>::try_from(bytes.as_slice()).map(i64::from_be_bytes).map_err(|_| {
                        Error::Restore(format!("{}[{partition}]: the event time record is not 8 bytes", self.changelog_topic))
                    })?;
                    analysis.restore_watermark(partition, ns);
                    watermark = Some(ns);
                } else {
                    analysis.restore(partition, key, bytes).map_err(|err| Error::Restore(format!("{}[{partition}] key {key}: {err}", self.changelog_topic)))?;
                    restored += 1;
                }
            }
            tracing::info!(partition, series = restored, changelog_end = end, "partition restored");
            self.stats.restored_series.fetch_add(restored, Ordering::Relaxed);
            owned.insert(partition, Owned { next_offset: None, changelog_end: end, dirty: HashSet::new(), watermark_written: watermark });
            positions.add_partition_offset(&self.input_topic, partition, position)?;
        }
        self.stats.partitions.store(owned.len() as u64, Ordering::SeqCst);
        Ok(positions)
    }

    fn forget(&self, partitions: &[i32]) {
        let mut owned = lock(&self.owned);
        let mut analysis = lock(&self.analysis);
        for partition in partitions {
            analysis.forget_partition(*partition);
            owned.remove(partition);
        }
        self.stats.partitions.store(owned.len() as u64, Ordering::SeqCst);
    }

    fn abort(&self) {
        if let Err(failed) = lock(&self.txns).abort() {
            tracing::warn!(%failed, "abort failed; the broker times the transaction out");
        }
    }
}

/// Rebalance handling: before partitions move, commit what they produced with their checkpoints;
/// after they arrive, restore their series.
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
                (tpl.elements_for_topic(&shared.input_topic).iter().map(|e| e.partition()).collect(), consumer.assignment_lost())
            }
            Rebalance::Error(err) => {
                tracing::warn!(error = %err, "rebalance failed; every partition is dropped");
                (lock(&shared.owned).keys().copied().collect(), true)
            }
            Rebalance::Assign(_) => return,
        };
        if lost {
            // Another member may own these partitions already: nothing of ours may commit.
            shared.abort();
        } else if let Err(failed) = shared.commit_all(consumer) {
            tracing::warn!(%failed, "commit on revoke failed; the next owner resumes from the last commit");
        }
        shared.forget(&revoked);
        tracing::info!(partitions = ?revoked, lost, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else { return };
        // The assignment positions each partition at its committed offset; the series need restoring.
        match self.shared.restore(consumer, tpl) {
            Ok(_) => {
                self.shared.stats.assignments.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => {
                tracing::error!(error = %err, "partitions could not be restored; stopping");
                *lock(&self.shared.broken) = Some(err);
            }
        }
    }
}

pub(crate) type InputConsumer = StreamConsumer<RebalanceContext>;

/// The consume-analyze-produce loop.
pub(crate) struct Consume {
    pub(crate) consumer: InputConsumer,
    pub(crate) shared: Arc<Shared>,
    pub(crate) commit_interval: Duration,
}

impl std::fmt::Debug for Consume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consume").field("shared", &self.shared).finish_non_exhaustive()
    }
}

impl Consume {
    /// Runs until `shutdown`, then commits and leaves the group.
    pub(crate) async fn run(self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.shared.input_topic])?;
        let mut schedule = plumbing::txn::CommitSchedule::new(self.commit_interval);
        loop {
            if let Some(err) = lock(&self.shared.broken).take() {
                return Err(err);
            }
            // Alert changes go out without waiting for the next tick (see `CommitSchedule`).
            let (drained, overdue) = (schedule.drained(), schedule.overdue());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = overdue => self.commit_on(&mut schedule)?,
                () = schedule.tick() => self.commit_on(&mut schedule)?,
                message = self.consumer.recv() => {
                    let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
                    // A record a sampled trace reached: its evaluation, and each alert it changes, join it.
                    let traced = plumbing::trace::from_kafka(message.headers()).map(|parent| {
                        let attributes = vec![Attribute::new("partition", i64::from(message.partition())), Attribute::new("offset", message.offset())];
                        plumbing::trace::child("analyzer.evaluate", Some(&parent), SpanKind::Consumer, attributes)
                    });
                    let alerts = self.shared.handle(&message);
                    drop(message);
                    if !alerts.is_empty() {
                        schedule.urge();
                    }
                    for alert in &alerts {
                        tracing::info!(id = %alert.id, state = ?alert.state(), value = alert.value, "alert changed");
                        let span = traced.as_ref().map(|parent| {
                            let attributes = vec![Attribute::new("alert", alert.id.clone()), Attribute::new("state", alert.state().as_str_name())];
                            plumbing::trace::child("analyzer.alert", Some(parent), SpanKind::Producer, attributes)
                        });
                        let traceparent = span.as_ref().and_then(plumbing::trace::traceparent);
                        let sent = tokio::task::block_in_place(|| self.shared.send_alert(alert, traceparent.as_deref()));
                        if let Some(span) = &span {
                            plumbing::trace::end(span);
                        }
                        if let Err(err) = sent {
                            let failed = lock(&self.shared.txns).fail(err);
                            tracing::warn!(%failed, "send failed; rewinding to the last commit");
                            self.rewind()?;
                            break;
                        }
                    }
                    if let Some(span) = &traced {
                        plumbing::trace::end(span);
                    }
                }
                () = drained => self.commit_on(&mut schedule)?,
            }
        }
        self.commit()?;
        self.consumer.unsubscribe();
        tracing::info!("analyzer consumer stopped");
        Ok(())
    }

    /// Commits on one of `schedule`'s cues, and tells it so.
    fn commit_on(&self, schedule: &mut plumbing::txn::CommitSchedule) -> Result<()> {
        self.commit()?;
        schedule.committed();
        Ok(())
    }

    /// Commits; after a transaction that did not commit, rewinds to the last one that did.
    fn commit(&self) -> Result<()> {
        // Commits block for up to their deadline: keep them off the async workers.
        match tokio::task::block_in_place(|| self.shared.commit_all(&self.consumer)) {
            Ok(()) => Ok(()),
            Err(failed) => {
                tracing::warn!(%failed, "transaction failed; rewinding to the last commit");
                self.rewind()
            }
        }
    }

    /// Puts every owned partition back to its last commit: series restored from the changelog,
    /// reading resumed from the committed offset.
    fn rewind(&self) -> Result<()> {
        let owned = self.consumer.assignment()?;
        let partitions: Vec<i32> = owned.elements_for_topic(&self.shared.input_topic).iter().map(|e| e.partition()).collect();
        self.shared.forget(&partitions);
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
