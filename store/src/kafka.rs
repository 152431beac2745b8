//! The aggregates consumer: batches messages, writes each batch in one durable transaction, and only
//! then commits the batch's offsets. A crash replays at most the uncommitted batch, which overwrites its
//! own rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::prost::Message as _;
use proto::v1::Aggregate;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::error::Result;
use crate::storage::Storage;

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Window rows written for the first time.
    pub inserted: AtomicU64,
    /// Window rows written again by a replay.
    pub replaced: AtomicU64,
    /// Messages on the aggregates topic that are not an `Aggregate`.
    pub malformed: AtomicU64,
}

pub(crate) struct Ingest {
    pub(crate) consumer: StreamConsumer,
    pub(crate) topic: String,
    pub(crate) storage: Arc<Storage>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) max_batch: usize,
    pub(crate) max_batch_delay: Duration,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("topic", &self.topic).finish_non_exhaustive()
    }
}

/// A batch being gathered: the aggregates and the next offset to commit per partition.
#[derive(Default)]
struct Batch {
    aggregates: Vec<Aggregate>,
    next_offsets: HashMap<i32, i64>,
}

impl Ingest {
    pub(crate) async fn run(self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.topic])?;
        let mut batch = Batch::default();
        let mut deadline = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(deadline), if !batch.next_offsets.is_empty() => {
                    self.flush(std::mem::take(&mut batch), CommitMode::Async).await?;
                }
                message = self.consumer.recv() => {
                    let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
                    if batch.next_offsets.is_empty() {
                        deadline = Instant::now() + self.max_batch_delay;
                    }
                    match message.payload().map(Aggregate::decode) {
                        Some(Ok(aggregate)) => batch.aggregates.push(aggregate),
                        _ => {
                            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(partition = message.partition(), offset = message.offset(), "not an aggregate; skipped");
                        }
                    }
                    batch.next_offsets.insert(message.partition(), message.offset() + 1);
                    if batch.aggregates.len() >= self.max_batch {
                        self.flush(std::mem::take(&mut batch), CommitMode::Async).await?;
                    }
                }
            }
        }
        self.flush(batch, CommitMode::Sync).await?;
        self.consumer.unsubscribe();
        tracing::info!("store ingest stopped");
        Ok(())
    }

    /// Makes `batch` durable, then commits its offsets.
    async fn flush(&self, batch: Batch, mode: CommitMode) -> Result<()> {
        if batch.next_offsets.is_empty() {
            return Ok(());
        }
        let storage = Arc::clone(&self.storage);
        let aggregates = batch.aggregates;
        let written = tokio::task::spawn_blocking(move || storage.write(&aggregates)).await??;
        self.stats.inserted.fetch_add(written.inserted as u64, Ordering::Relaxed);
        self.stats.replaced.fetch_add(written.replaced as u64, Ordering::Relaxed);
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in batch.next_offsets {
            offsets.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
        }
        self.consumer.commit(&offsets, mode)?;
        Ok(())
    }
}
