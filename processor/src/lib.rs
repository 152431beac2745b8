//! The processor: per-series event-time windows (tumbling or hopping, per metric) over the points
//! topic, with count, sum, mean, min, max, first, last, standard deviation, gradient, rate and
//! quantiles from a mergeable sketch, produced to the aggregates topic when a partition's watermark
//! closes them, exactly once by default (Kafka transactions).

pub mod aggregate;
pub mod config;
pub mod error;
mod kafka;
mod txn;
pub mod deadletter;
pub mod window;

use std::sync::Arc;

use plumbing::Shutdown;

pub use crate::config::{Delivery, Settings, WindowDef, WindowRule};
pub use crate::error::{Error, Result};
pub use crate::kafka::{CLOSED_AT_HEADER, Stats};
use crate::kafka::{Output, Pipeline, ProducerHealth, RebalanceContext, Routing, Shared, Windowing};
use crate::txn::Transactions;

/// A processor that is connected but not yet consuming.
#[derive(Debug)]
pub struct App {
    pipeline: Pipeline,
}

impl App {
    /// Creates the topics if needed and connects the consumer and the producer.
    pub async fn build(settings: Settings) -> Result<Self> {
        let Settings { kafka, group_id, topics, windows, commit_interval, delivery, transactional_id, transaction_timeout, .. } =
            settings;
        kafka.ensure_topics(&[&topics.points, &topics.aggregates, &topics.deadletter]).await?;
        let output = match delivery {
            Delivery::ExactlyOnce => {
                let config = kafka.transactional_producer("runnel-processor", &transactional_id, transaction_timeout);
                // Registering the id blocks until the broker fenced any former instance with it.
                Output::ExactlyOnce(tokio::task::spawn_blocking(move || Transactions::new(config, transaction_timeout)).await??)
            }
            Delivery::AtLeastOnce => {
                let health = ProducerHealth::default();
                let producer = kafka.producer("runnel-processor").create_with_context(health.clone())?;
                Output::AtLeastOnce { producer, health }
            }
        };
        let routing = Routing {
            points_topic: topics.points.name,
            aggregates_topic: topics.aggregates.name,
            deadletter_topic: topics.deadletter.name,
            max_future_ns: config::nanos(windows.max_future),
            idle_timeout: windows.idle_timeout,
        };
        let windowing = Windowing {
            // Validated at load: every glob compiles.
            rules: windows.rules().map_err(|err| Error::Config(err.to_string()))?,
            allowed_lateness_ns: config::nanos(windows.allowed_lateness),
            sketch: windows.sketch(),
        };
        let shared = Arc::new(Shared::new(windowing, routing, output, transaction_timeout.max(kafka.request_timeout)));
        let consumer = kafka
            .consumer("runnel-processor", &group_id)
            .create_with_context(RebalanceContext { shared: Arc::clone(&shared) })?;
        Ok(Self { pipeline: Pipeline::new(consumer, shared, commit_interval) })
    }

    /// Counters of what the processor has done.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.pipeline.shared.stats)
    }

    /// Consumes until `shutdown`, then commits what is durable and leaves the group.
    pub async fn run(self, shutdown: Shutdown) -> Result<()> {
        self.pipeline.run(shutdown).await
    }
}
