//! The points sink: accepted points go to the points topic keyed by series, so one series always lands
//! in one partition, and a batch counts as written only when Kafka acknowledged every point. A bounded
//! number of points may await Kafka's acknowledgement at once: past it, a write is refused at once as
//! overloaded (the client retries later) rather than queued without bound or dropped. While librdkafka
//! reports every broker down, new writes are refused at once as unavailable instead of queued for the
//! delivery timeout; a probe every second notices the brokers' return.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use proto::prost::Message as _;
use proto::v1::{DeadLetter, Point};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// How long a send may wait for room in the producer's queue before the batch fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, while every broker is down, the sink asks for metadata to notice their return.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Notes librdkafka's report that every broker is down.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reachability {
    down: Arc<AtomicBool>,
}

impl ClientContext for Reachability {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.down.swap(true, Ordering::SeqCst) {
                tracing::warn!(reason, "every kafka broker is down; writes are refused until one answers");
            }
        } else {
            tracing::warn!(error = %error, reason, "kafka producer error; librdkafka recovers");
        }
    }
}

pub(crate) type Producer = FutureProducer<Reachability>;

#[derive(Clone)]
pub(crate) struct PointSink {
    producer: Producer,
    /// The producer's context, shared: whether every broker is down.
    reach: Reachability,
    deadletter_topic: String,
    topic: String,
    /// A permit per point that may await Kafka's acknowledgement.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl std::fmt::Debug for PointSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointSink").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl PointSink {
    /// `reach` is the context `producer` was created with.
    pub(crate) fn new(producer: Producer, reach: Reachability, topic: String, deadletter_topic: String, max_in_flight: usize) -> Self {
        Self { producer, reach, topic, deadletter_topic, in_flight: Arc::new(Semaphore::new(max_in_flight)), max_in_flight }
    }

    /// While every broker is down, asks for metadata every second; the first answer lets writes in
    /// again. Runs until `shutdown`.
    pub(crate) async fn probe(&self, shutdown: plumbing::Shutdown) {
        let down = &self.reach.down;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
            if !down.load(Ordering::SeqCst) {
                continue;
            }
            let producer = self.producer.clone();
            let answered = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, PROBE_EVERY).is_ok())
                .await
                .unwrap_or(false);
            if answered && down.swap(false, Ordering::SeqCst) {
                tracing::info!("a kafka broker answers again; writes are accepted");
            }
        }
    }

    /// Writes every point and returns once Kafka acknowledged all of them; refuses the whole batch,
    /// writing nothing, when it does not fit beside the points already awaiting acknowledgement.
    /// Dead letters for the dead-letter topic go in the same write: all acknowledged, or an error.
    pub(crate) async fn write(&self, points: &[Point], letters: &[DeadLetter]) -> Result<()> {
        if self.reach.down.load(Ordering::SeqCst) {
            return Err(Error::KafkaDown);
        }
        let records = points.len() + letters.len();
        let wanted = u32::try_from(records).unwrap_or(u32::MAX);
        // Held until every send below has its answer; dropping it returns the room.
        let _room = self.in_flight.try_acquire_many(wanted).map_err(|_| Error::Overloaded {
            points: records,
            in_flight: self.max_in_flight - self.in_flight.available_permits(),
            limit: self.max_in_flight,
        })?;
        let mut encoded: Vec<(&str, String, Vec<u8>)> =
            points.iter().map(|p| (self.topic.as_str(), p.series_key(), p.encode_to_vec())).collect();
        // Keyed like the point each replaces, as every dead letter is.
        encoded.extend(letters.iter().map(|l| {
            let key = l.point.as_ref().map(Point::series_key).unwrap_or_default();
            (self.deadletter_topic.as_str(), key, l.encode_to_vec())
        }));
        let sends = encoded.iter().map(|(topic, key, payload)| {
            self.producer.send(FutureRecord::to(topic).key(key).payload(payload), QUEUE_TIMEOUT)
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

    /// How many points await Kafka's acknowledgement.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Waits for every queued point to be acknowledged.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(Error::Kafka)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::ClientConfig;

    use super::*;

    fn points(n: usize) -> Vec<Point> {
        (0..n).map(|i| Point { metric: "m".into(), tags: BTreeMap::new(), timestamp_ns: i as i64, value: 1.0 }).collect()
    }

    /// No broker listens on port 1 of loopback, so sends wait for their delivery timeout: the points
    /// stay in flight as long as the test needs.
    /// With `noticed` false the sink is not told that every broker is down, so that its writes wait in
    /// flight rather than being refused.
    fn unreachable_sink(max_in_flight: usize, noticed: bool) -> PointSink {
        let reach = Reachability::default();
        let producer: Producer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "60000")
            .create_with_context(reach.clone())
            .expect("a producer is created without contacting the broker");
        PointSink::new(producer, if noticed { reach } else { Reachability::default() }, "t".into(), "d".into(), max_in_flight)
    }

    #[tokio::test]
    async fn with_every_broker_down_a_write_is_refused_at_once() {
        let sink = unreachable_sink(5, true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !sink.reach.down.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "librdkafka never reported every broker down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(sink.write(&points(1), &[]).await, Err(Error::KafkaDown)));
        assert_eq!(sink.in_flight(), 0, "nothing was queued");
    }

    #[tokio::test]
    async fn a_batch_past_the_room_left_is_refused_whole_and_the_room_returns() {
        let sink = unreachable_sink(5, false);
        let stuck = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.write(&points(3), &[]).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.in_flight() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the first batch never went in flight");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match sink.write(&points(3), &[]).await {
            Err(Error::Overloaded { points: 3, in_flight: 3, limit: 5 }) => {}
            other => panic!("expected an overload refusal, got {other:?}"),
        }
        assert_eq!(sink.in_flight(), 3, "the refused batch took no room");
        // Abandoning a write (a client that went away) returns its room.
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        assert_eq!(sink.in_flight(), 0);
    }
}
