//! The points sink: accepted points go to the points topic keyed by series, so one series always lands
//! in one partition, and a batch counts as written only when Kafka acknowledged every point.

use std::time::Duration;

use futures::future::join_all;
use proto::prost::Message as _;
use proto::v1::Point;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::error::{Error, Result};

/// How long a send may wait for room in the producer's queue before the batch fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct PointSink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for PointSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl PointSink {
    pub(crate) fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Writes every point and returns once Kafka acknowledged all of them.
    pub(crate) async fn write(&self, points: &[Point]) -> Result<()> {
        let encoded: Vec<(String, Vec<u8>)> =
            points.iter().map(|p| (p.series_key(), p.encode_to_vec())).collect();
        let sends = encoded.iter().map(|(key, payload)| {
            self.producer.send(FutureRecord::to(&self.topic).key(key).payload(payload), QUEUE_TIMEOUT)
        });
        let results = join_all(sends).await;
        let total = results.len();
        let mut failed = 0;
        let mut first = None;
        for result in results {
            if let Err((err, _)) = result {
                failed += 1;
                first.get_or_insert(err);
            }
        }
        match first {
            None => Ok(()),
            Some(source) => Err(Error::Delivery { failed, total, source }),
        }
    }

    /// Waits for every queued point to be acknowledged.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(Error::Kafka)
    }
}
