//! Ingest: Kafka is the store's write-ahead log. Records read from a partition wait in memory (where
//! queries see them) until the next flush writes them as one Parquet segment, lists that segment in the
//! partition's manifest, and only then commits the Kafka offset.
//!
//! The manifest, not the committed offset, says what is durable: a partition taken over (after a
//! rebalance or a crash) is read again from its manifest's end, and a flush that finds the manifest
//! version it meant to publish already taken has been fenced by a newer owner and gives the partition
//! up. Nothing is listed twice and nothing past the listed end is skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::trace::SpanKind;
use plumbing::trace::Attribute;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::error::Result;
use crate::maintain;
use crate::objects::ObjectsError;
use crate::segment::{concat, encode_segment, segment_name};
use crate::table::{Owned, Pending, Table, lock};

/// How long a replay waits to reach the end of a segment it found unlisted, before cutting elsewhere.
const CUT_PATIENCE: Duration = Duration::from_secs(30);
/// Deadline of a seek.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages polled from Kafka, a message read again after a take-over counted again (published
    /// every few hundred messages, and whenever reading idles).
    pub read: AtomicU64,
    /// Rows made durable (listed in a manifest).
    pub rows: AtomicU64,
    /// Segments listed.
    pub segments: AtomicU64,
    /// Flushes that failed (an object store error); their rows stay in memory for the next one.
    pub flush_errors: AtomicU64,
    /// Partitions given up because another instance had published their next manifest version.
    pub fenced: AtomicU64,
    /// Partitions taken over: their manifest read and reading positioned at its end.
    pub takeovers: AtomicU64,
    /// Messages that are not a record of their topic's kind (skipped).
    pub malformed: AtomicU64,
    /// Assignments taken (an empty one counts): the first of every kind makes the store ready.
    pub assignments: AtomicU64,
    /// How long each segment took to encode, write and list.
    pub flush_seconds: plumbing::ops::Seconds,
}

/// Takes partitions over as they are assigned, and drops the memory of those revoked.
pub(crate) struct IngestContext {
    pub(crate) table: Arc<Table>,
    pub(crate) stats: Arc<Stats>,
    /// How long a segment found orphaned at a take-over stays readable before it is deleted.
    pub(crate) delete_grace: Duration,
    /// Runs the take-over's object store reads from the thread that polls (where rebalances run).
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) kafka_stats: plumbing::ops::KafkaStats,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.kafka_stats.record(statistics);
    }
}

impl ConsumerContext for IngestContext {
    /// librdkafka's rebalance, with each assigned partition taken over first and assigned at its
    /// manifest's end: fetching starts where reading must, instead of being corrected by a seek (after
    /// which librdkafka waits its fetch backoff, half a second, before fetching the partition again).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements_for_topic(&self.table.topic).iter().map(|e| e.partition()).collect();
                for partition in partitions {
                    match self.runtime.block_on(self.take_over(partition)) {
                        Ok(position) => {
                            if let Err(err) = tpl.set_partition_offset(&self.table.topic, partition, position) {
                                tracing::warn!(error = %err, partition, "assignment offset not set");
                            }
                        }
                        // Assigned anyway: its first message tries the take-over again.
                        Err(err) => {
                            tracing::warn!(error = %err, topic = %self.table.topic, partition, "partition could not be taken over yet")
                        }
                    }
                }
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                self.stats.assignments.fetch_add(1, Ordering::SeqCst);
                assigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.hand_over(consumer, tpl.elements_for_topic(&self.table.topic).iter().map(|e| e.partition()));
                if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() }
            }
            err => {
                // librdkafka unassigns everything after a rebalance error.
                tracing::error!(error = ?RDKafkaErrorCode::from(err), topic = %self.table.topic, "rebalance failed");
                let all: Vec<i32> = lock(&self.table.owned).keys().copied().collect();
                self.hand_over(consumer, all.into_iter());
                consumer.unassign()
            }
        };
        if let Err(err) = outcome {
            tracing::error!(error = %err, topic = %self.table.topic, "assignment not applied");
        }
    }
}

impl IngestContext {
    /// Drops the memory of partitions no longer owned. Their unflushed rows are not lost: nothing past
    /// the manifest was committed, so the next owner reads them again.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, partitions: impl Iterator<Item = i32>) {
        let mut owned = lock(&self.table.owned);
        for partition in partitions {
            if let Some(state) = owned.remove(&partition) {
                tracing::info!(topic = %self.table.topic, partition, pending = state.pending.len(), lost = consumer.assignment_lost(), "partition handed over");
            }
        }
    }

    /// Reads a partition's manifest and owns the partition from there; returns where reading resumes.
    async fn take_over(&self, partition: i32) -> Result<Offset> {
        let table = &self.table;
        let manifest = table.objects.latest_manifest(&table.kind, &table.topic, partition).await?;
        let mut tiers = Vec::with_capacity(table.tiers.len());
        for tier in &table.tiers {
            tiers.push(Arc::new(table.objects.latest_manifest(&tier.kind, &table.topic, partition).await?));
        }
        // Segments a former owner compacted or expired but did not live to delete: unlisted, and ending
        // at or before the manifest's end. (One starting at the end is a flush cut short by a crash,
        // which the replay below rewrites.)
        for (kind, listed) in std::iter::once(&manifest).chain(tiers.iter().map(Arc::as_ref)).enumerate() {
            let Some(end) = listed.next_offset() else { continue };
            let names = table.objects.names_starting(&table.prefix_of(kind, partition), "").await?;
            let orphans = names.into_iter().filter(|name| {
                !listed.segments.iter().any(|s| s.name == *name) && segment_end(name).is_some_and(|e| e <= end)
            });
            maintain::doom_names(table, self.delete_grace, orphans);
        }
        // Segments written from where the manifest ends (or, with nothing listed yet, from anywhere) and
        // never listed: flushes cut short by a crash. Reading resumes where the earliest of them starts,
        // and the first segment is cut where it ends, so the replay rewrites that very object.
        let listed_end = manifest.next_offset();
        let after = listed_end.map_or_else(String::new, |from| format!("{from:020}-"));
        let unlisted: Vec<String> = table.objects.names_starting(&table.prefix_of(0, partition), &after).await?;
        let resume_from = listed_end.or_else(|| unlisted.iter().filter_map(|name| segment_range(name)).map(|(first, _)| first).min());
        let cut_at = unlisted.iter().filter_map(|name| segment_range(name)).filter(|(first, _)| Some(*first) == resume_from).map(|(_, end)| end).max();
        tracing::info!(topic = %table.topic, partition, ?resume_from, ?cut_at, version = manifest.version, "partition taken over");
        self.stats.takeovers.fetch_add(1, Ordering::Relaxed);
        let state = Owned {
            generation: table.next_generation(),
            manifest: Arc::new(manifest),
            pending: Pending::new(table.record),
            first_read: None,
            next_read: None,
            resume_from,
            cut_at,
            cut_deadline: Instant::now() + CUT_PATIENCE,
            unlisted,
            tiers,
            flushing: None,
        };
        lock(&table.owned).insert(partition, state);
        Ok(resume_from.map_or(Offset::Beginning, Offset::Offset))
    }
}

pub(crate) type IngestConsumer = BaseConsumer<IngestContext>;

pub(crate) struct Ingest {
    pub(crate) consumer: Arc<IngestConsumer>,
    pub(crate) table: Arc<Table>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) flush_interval: Duration,
    pub(crate) max_pending_rows: usize,
    pub(crate) maintenance: maintain::Policy,
    pub(crate) upkeep: Arc<maintain::Upkeep>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("topic", &self.table.topic).finish_non_exhaustive()
    }
}

impl Ingest {
    pub(crate) async fn run(self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.table.topic])?;
        let this = Arc::new(self);
        // Reading is a plain polling loop on a thread of its own: no future per message, and the
        // rebalance callbacks run there too.
        let mut reader = {
            let (this, shutdown, runtime) = (Arc::clone(&this), shutdown.clone(), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || this.read_loop(&shutdown, &runtime))
        };
        let mut ticker = tokio::time::interval(this.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upkeep = tokio::time::interval(this.maintenance.interval);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Flushes and upkeep run beside each other (each one at a time), and publish manifests in turns.
        let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
        let mut upkeeping: Option<tokio::task::JoinHandle<()>> = None;
        let read = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break None,
                read = &mut reader => break Some(read),
                _ = finished(&mut flushing), if flushing.is_some() => flushing = None,
                _ = finished(&mut upkeeping), if upkeeping.is_some() => upkeeping = None,
                _ = ticker.tick(), if flushing.is_none() => {
                    let flush = this.flusher();
                    flushing = Some(tokio::spawn(async move { flush.flush(CommitMode::Async).await }));
                }
                _ = upkeep.tick(), if upkeeping.is_none() => {
                    let (table, policy, counters) = (Arc::clone(&this.table), this.maintenance.clone(), Arc::clone(&this.upkeep));
                    upkeeping = Some(tokio::spawn(async move { maintain::run(&table, &policy, &counters).await }));
                }
            }
        };
        // The reader stops at the shutdown (or has stopped on a fatal error).
        let read = match read {
            Some(read) => read,
            None => reader.await,
        };
        for task in [flushing, upkeeping].into_iter().flatten() {
            let _ = task.await;
        }
        this.flusher().flush(CommitMode::Sync).await;
        this.consumer.unsubscribe();
        tracing::info!(topic = %this.table.topic, pending = this.table.pending_rows(), "store ingest stopped");
        read?
    }

    /// Polls messages into memory until `shutdown`; only a fatal consumer error ends it early.
    fn read_loop(&self, shutdown: &plumbing::Shutdown, runtime: &tokio::runtime::Handle) -> Result<()> {
        // The shutdown and the memory budget are looked at every 256 messages, and whenever a poll
        // comes back empty: both cost more than reading a message does (counting the rows takes the
        // lock the queries take).
        const CHECK_EVERY: u32 = 256;
        let mut since_check = CHECK_EVERY;
        let mut read = 0;
        loop {
            if since_check >= CHECK_EVERY {
                self.stats.read.fetch_add(std::mem::take(&mut read), Ordering::Relaxed);
                if shutdown.is_cancelled() {
                    break;
                }
                // Past the memory budget, reading pauses until a flush makes room.
                if self.table.pending_rows() >= self.max_pending_rows {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                since_check = 0;
            }
            since_check += 1;
            let Some(polled) = self.consumer.poll(Duration::from_millis(100)) else {
                since_check = CHECK_EVERY;
                continue;
            };
            let Some(message) = plumbing::kafka::unless_transient(polled)? else { continue };
            read += 1;
            // A record a sampled trace reached: the store's part of it is the record being kept.
            let traced = plumbing::trace::from_kafka(message.headers()).map(|parent| {
                let attributes = vec![
                    Attribute::new("kind", self.table.kind.clone()),
                    Attribute::new("partition", i64::from(message.partition())),
                    Attribute::new("offset", message.offset()),
                ];
                plumbing::trace::child("store.ingest", Some(&parent), SpanKind::Consumer, attributes)
            });
            let taking_over = self.read(&message);
            if let Some(span) = &traced {
                plumbing::trace::end(span);
            }
            if let Some(partition) = taking_over {
                drop(message);
                if let Err(err) = runtime.block_on(self.take_over(partition)) {
                    // The next message of the partition tries again.
                    tracing::warn!(error = %err, topic = %self.table.topic, partition, "partition could not be taken over yet");
                }
            }
        }
        Ok(())
    }

    fn flusher(&self) -> Flusher {
        Flusher {
            consumer: Arc::clone(&self.consumer),
            table: Arc::clone(&self.table),
            stats: Arc::clone(&self.stats),
            delete_grace: self.maintenance.delete_grace,
        }
    }

    /// Keeps one message in memory; the first message of a partition not owned yet names it, to be
    /// taken over.
    fn read(&self, message: &BorrowedMessage<'_>) -> Option<i32> {
        let (partition, offset) = (message.partition(), message.offset());
        {
            let mut owned = lock(&self.table.owned);
            if let Some(state) = owned.get_mut(&partition) {
                if state.resume_from.is_some_and(|from| offset < from) {
                    return None;
                }
                state.first_read.get_or_insert(offset);
                state.next_read = Some(offset + 1);
                if let Err(err) = state.pending.push(message.payload(), partition, offset) {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, topic = %self.table.topic, partition, offset, "not a record of this topic; skipped");
                }
                return None;
            }
        }
        Some(partition)
    }

    /// Takes over a partition whose assignment could not (its first message revealed it): reading
    /// is positioned again where it resumes, and that message read again from there.
    async fn take_over(&self, partition: i32) -> Result<()> {
        let position = self.consumer.context().take_over(partition).await?;
        if let Err(err) = self.consumer.seek(&self.table.topic, partition, position, SEEK_TIMEOUT) {
            // Not owned after all: the next message tries again.
            lock(&self.table.owned).remove(&partition);
            return Err(err.into());
        }
        Ok(())
    }
}

/// Waits for a task to end (its panic, already logged by the runtime, ends it too).
async fn finished(task: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = task.as_mut() {
        let _ = task.await;
    }
}

/// The offsets a segment's name says it holds: `.../<first>-<next>.parquet`.
fn segment_range(name: &str) -> Option<(i64, i64)> {
    let (first, next) = name.rsplit('/').next()?.strip_suffix(".parquet")?.split_once('-')?;
    Some((first.parse().ok()?, next.parse().ok()?))
}

/// The offset a segment's name says it ends at.
fn segment_end(name: &str) -> Option<i64> {
    segment_range(name).map(|(_, end)| end)
}

/// Makes what memory holds durable, partition by partition.
struct Flusher {
    consumer: Arc<IngestConsumer>,
    table: Arc<Table>,
    stats: Arc<Stats>,
    delete_grace: Duration,
}

/// One partition's part of a flush, taken under the lock.
struct Work {
    partition: i32,
    generation: u64,
    rows: Arc<Vec<arrow::array::RecordBatch>>,
    first: i64,
    cut: i64,
}

impl Flusher {
    async fn flush(&self, mode: CommitMode) {
        let work = self.plan();
        let mut offsets = TopicPartitionList::new();
        for work in work {
            let (partition, cut) = (work.partition, work.cut);
            match self.write(work).await {
                Ok(()) => {
                    if let Err(err) = offsets.add_partition_offset(&self.table.topic, partition, Offset::Offset(cut)) {
                        tracing::warn!(error = %err, partition, "offset not committed");
                    }
                }
                Err(crate::Error::Objects(ObjectsError::Fenced { .. })) => {}
                Err(err) => {
                    self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, topic = %self.table.topic, partition, "flush failed; rows stay in memory for the next one");
                }
            }
        }
        if offsets.count() > 0 {
            // Advisory only (the manifest says where to resume), so a partition handed over meanwhile
            // refusing the commit is harmless.
            if let Err(err) = self.consumer.commit(&offsets, mode) {
                tracing::debug!(error = %err, "offset commit refused");
            }
        }
    }

    /// What each owned partition has to flush.
    fn plan(&self) -> Vec<Work> {
        let mut owned = lock(&self.table.owned);
        let mut work = Vec::new();
        for (&partition, state) in owned.iter_mut() {
            let Some(next_read) = state.next_read else { continue };
            let Some(first) = state.manifest.next_offset().or(state.first_read) else { continue };
            if next_read <= first {
                continue;
            }
            let cut = match state.cut_at {
                Some(cut) if next_read >= cut => cut,
                Some(cut) if Instant::now() < state.cut_deadline => {
                    tracing::debug!(partition, cut, next_read, "replay not yet at the end of the unlisted segment");
                    continue;
                }
                Some(cut) => {
                    // The segment this replay cannot reach overlaps what will be listed instead: a copy
                    // no reader ever lists, deleted like any other.
                    tracing::warn!(topic = %self.table.topic, partition, cut, next_read, "replay did not reach the end of the unlisted segment; cutting elsewhere");
                    state.cut_at = None;
                    maintain::doom_names(&self.table, self.delete_grace, std::mem::take(&mut state.unlisted));
                    next_read
                }
                None => next_read,
            };
            // The rows move aside, not copied: queries still see them until their segment is listed.
            let rows = match state.pending.take_before(cut) {
                Ok(rows) => Arc::new(rows),
                Err(err) => {
                    tracing::error!(error = %err, partition, "pending rows unreadable; not flushed");
                    continue;
                }
            };
            state.flushing = Some(Arc::clone(&rows));
            work.push(Work { partition, generation: state.generation, rows, first, cut });
        }
        work
    }

    /// Writes one partition's segment, lists it, and drops its rows from memory; when that fails, the
    /// rows go back to be flushed next time.
    async fn write(&self, work: Work) -> Result<()> {
        let (partition, generation) = (work.partition, work.generation);
        let result = self.write_segment(work).await;
        if result.is_err() {
            let mut owned = lock(&self.table.owned);
            if let Some(state) = owned.get_mut(&partition).filter(|s| s.generation == generation)
                && let Some(flushing) = state.flushing.take()
            {
                state.pending.put_back(Arc::try_unwrap(flushing).unwrap_or_else(|shared| (*shared).clone()));
            }
        }
        result
    }

    async fn write_segment(&self, work: Work) -> Result<()> {
        let table = &self.table;
        let Work { partition, generation, rows, first, cut } = work;
        let started = Instant::now();
        let (record, name) = (table.record, segment_name(&table.kind, &table.topic, partition, first, cut));
        let (bytes, meta) =
            tokio::task::spawn_blocking(move || encode_segment(&concat(record, &rows)?, record.time_column(), name, first, cut)).await??;
        let row_count = meta.rows;
        table.objects.put_segment(&meta.name, bytes).await?;
        // The crash test widens the moment between writing a segment and listing it, so that its kills
        // land there: `FAILPOINTS=store::before_publish=return(<ms>)`.
        if let Some(ms) = fail::eval("store::before_publish", |arg| arg.and_then(|a| a.parse::<u64>().ok())).flatten() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let listing = |current: &crate::manifest::Manifest| {
            let mut next = current.clone();
            next.append(meta).map_err(|err| crate::Error::Internal(err.to_string()))?;
            Ok(Some(next))
        };
        let published = table
            .publish(0, partition, generation, listing, |state| {
                state.flushing = None;
                state.cut_at = None;
                state.unlisted.clear();
            })
            .await;
        if let Err(crate::Error::Objects(ObjectsError::Fenced { .. })) = &published {
            self.stats.fenced.fetch_add(1, Ordering::Relaxed);
        }
        if !published? {
            // Handed over meanwhile: the next owner lists these records (the same segment, rewritten).
            return Err(crate::Error::Internal(format!("partition {partition} was handed over before its segment was listed")));
        }
        self.stats.rows.fetch_add(row_count, Ordering::Relaxed);
        self.stats.segments.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_seconds.observe(started.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_name_says_where_it_ends() {
        let name = crate::segment::segment_name("aggregates", "t.v1", 3, 40, 52);
        assert_eq!(segment_end(&name), Some(52));
        assert_eq!(segment_end("aggregates/t/p00000/junk.parquet"), None);
    }

}
