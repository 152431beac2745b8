//! The analyzer's Kafka side: consume aggregates, update the models, publish alert changes to the alerts
//! topic (where `WatchAlerts` reads them), and commit input offsets once the alerts are acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::prost::Message as _;
use proto::v1::Aggregate;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::state::Analysis;

/// Counters of the consumer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Aggregates read and folded into the models (replays included).
    pub aggregates: AtomicU64,
    /// Alert changes published.
    pub alerts: AtomicU64,
}

pub(crate) struct Consume {
    pub(crate) consumer: StreamConsumer,
    pub(crate) producer: FutureProducer,
    pub(crate) aggregates_topic: String,
    pub(crate) alerts_topic: String,
    pub(crate) analysis: Arc<Mutex<Analysis>>,
    pub(crate) commit_interval: Duration,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for Consume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consume").field("aggregates_topic", &self.aggregates_topic).finish_non_exhaustive()
    }
}

impl Consume {
    pub(crate) async fn run(self, shutdown: plumbing::Shutdown) -> Result<()> {
        self.consumer.subscribe(&[&self.aggregates_topic])?;
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<DeliveryFuture> = Vec::new();
        let mut offsets: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.commit(&mut pending, &mut offsets, CommitMode::Async).await?,
                message = self.consumer.recv() => {
                    let Some(message) = plumbing::kafka::unless_transient(message)? else { continue };
                    offsets.insert(message.partition(), message.offset() + 1);
                    let Some(Ok(aggregate)) = message.payload().map(Aggregate::decode) else {
                        tracing::warn!(partition = message.partition(), offset = message.offset(), "not an aggregate; skipped");
                        continue;
                    };
                    let alerts = self.analysis.lock().unwrap_or_else(PoisonError::into_inner).observe(message.partition(), &aggregate).alerts;
                    self.stats.aggregates.fetch_add(1, Ordering::Relaxed);
                    self.stats.alerts.fetch_add(alerts.len() as u64, Ordering::Relaxed);
                    for alert in alerts {
                        tracing::info!(id = %alert.id, state = ?alert.state(), value = alert.value, "alert changed");
                        let payload = alert.encode_to_vec();
                        let record = FutureRecord::to(&self.alerts_topic).key(&alert.id).payload(&payload);
                        pending.push(self.producer.send_result(record).map_err(|(err, _)| Error::Delivery(err))?);
                    }
                }
            }
        }
        self.commit(&mut pending, &mut offsets, CommitMode::Sync).await?;
        self.consumer.unsubscribe();
        tracing::info!("analyzer consumer stopped");
        Ok(())
    }

    async fn commit(
        &self,
        pending: &mut Vec<DeliveryFuture>,
        offsets: &mut std::collections::HashMap<i32, i64>,
        mode: CommitMode,
    ) -> Result<()> {
        plumbing::kafka::await_deliveries(pending.drain(..)).await.map_err(Error::Delivery)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, next) in offsets.drain() {
            list.add_partition_offset(&self.aggregates_topic, partition, Offset::Offset(next))?;
        }
        self.consumer.commit(&list, mode)?;
        Ok(())
    }
}
