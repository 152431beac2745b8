//! The points sink: accepted points go to the points topic keyed by series, so one series always lands
//! in one partition, and a batch counts as written only when Kafka acknowledged every point. A bounded
//! number of points may await Kafka's acknowledgement at once: past it, a write is refused at once as
//! overloaded (the client retries later) rather than queued without bound or dropped. A write's room
//! is held until Kafka answered for each of its points, even if its client went away meanwhile, so the
//! bound is on what librdkafka really holds. While librdkafka reports every broker down, new writes are
//! refused at once as unavailable instead of queued for the delivery timeout; a probe every second
//! notices the brokers' return.
//!
//! A write costs no allocation per point: keys and payloads are encoded into two reused buffers
//! (librdkafka copies them), and each point's delivery report counts down one shared [`Pending`]
//! instead of completing a future of its own.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::prost::Message as _;
use proto::v1::{DeadLetter, Point};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message as _};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use plumbing::ops::Readiness;

use crate::error::{Error, Result};

/// How long a send may wait for room in the producer's queue before the batch fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often, while every broker is down, the sink asks for metadata to notice their return.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Notes librdkafka's report that every broker is down, and counts delivery reports down.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reachability {
    down: Arc<AtomicBool>,
    pub(crate) stats: plumbing::ops::KafkaStats,
}

impl ClientContext for Reachability {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.stats.record(statistics);
    }

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

impl ProducerContext for Reachability {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        pending.settle(result.as_ref().map(|m| m.offset()).map_err(|(err, _)| err.clone()));
    }
}

/// One write's records awaiting Kafka's answer. The last answer returns the write's room, then wakes
/// the writer (in that order, so that a writer that goes on at once finds the room it left).
#[derive(Debug)]
pub(crate) struct Pending {
    left: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    done: Notify,
    room: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Pending {
    fn settle(&self, result: Result<i64, KafkaError>) {
        if let Err(err) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            // A poisoned lock means a panic elsewhere already; the count still says the write failed.
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert(err);
            }
        }
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Ok(mut room) = self.room.lock() {
                room.take();
            }
            self.done.notify_one();
        }
    }
}

/// Polled by a thread of its own, which runs the delivery reports.
pub(crate) type Producer = ThreadedProducer<Reachability>;

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
    /// again. `readiness` follows: not ready while every broker is down. Runs until `shutdown`.
    pub(crate) async fn probe(&self, shutdown: plumbing::Shutdown, readiness: Readiness) {
        let down = &self.reach.down;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
            let now = down.load(Ordering::SeqCst);
            readiness.set(!now);
            if !now {
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
    /// A sampled request's `traceparent` goes on every point's record, for the processor to continue.
    pub(crate) async fn write(&self, points: &[Point], letters: &[DeadLetter], traceparent: Option<&str>) -> Result<()> {
        if self.reach.down.load(Ordering::SeqCst) {
            return Err(Error::KafkaDown);
        }
        let records = points.len() + letters.len();
        if records == 0 {
            return Ok(());
        }
        let wanted = u32::try_from(records).unwrap_or(u32::MAX);
        let room = self.in_flight.clone().try_acquire_many_owned(wanted).map_err(|_| Error::Overloaded {
            points: records,
            in_flight: self.max_in_flight - self.in_flight.available_permits(),
            limit: self.max_in_flight,
        })?;
        let pending = Arc::new(Pending {
            left: AtomicUsize::new(records),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            done: Notify::new(),
            room: Mutex::new(Some(room)),
        });
        let (mut key, mut payload) = (String::new(), Vec::new());
        for point in points {
            key.clear();
            proto::write_series_key(&mut key, &point.metric, point.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            payload.clear();
            point.encode(&mut payload).map_err(|e| Error::BadRequest { what: "point".into(), reason: e.to_string() })?;
            self.send(&self.topic, &key, &payload, traceparent, &pending).await;
        }
        // Keyed like the point each replaces, as every dead letter is.
        for letter in letters {
            key = letter.point.as_ref().map(Point::series_key).unwrap_or_default();
            payload.clear();
            letter.encode(&mut payload).map_err(|e| Error::BadRequest { what: "dead letter".into(), reason: e.to_string() })?;
            self.send(&self.deadletter_topic, &key, &payload, None, &pending).await;
        }
        while pending.left.load(Ordering::SeqCst) > 0 {
            pending.done.notified().await;
        }
        let failed = pending.failed.load(Ordering::SeqCst);
        let first = pending.first_error.lock().ok().and_then(|mut first| first.take());
        match (failed, first) {
            (0, _) => Ok(()),
            (failed, source) => Err(Error::Delivery { failed, total: records, source: source.unwrap_or(KafkaError::Canceled) }),
        }
    }

    /// Queues one record, waiting up to [`QUEUE_TIMEOUT`] while librdkafka's queue is full; a record
    /// that cannot be queued is settled as failed at once.
    async fn send(&self, topic: &str, key: &str, payload: &[u8], traceparent: Option<&str>, pending: &Arc<Pending>) {
        let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
        let mut record = BaseRecord::with_opaque_to(topic, pending.clone()).key(key).payload(payload);
        if let Some(traceparent) = traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header { key: plumbing::trace::TRACEPARENT, value: Some(traceparent) }));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if tokio::time::Instant::now() < deadline => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, back)) => {
                    // The record was not queued, so no report will come for it.
                    back.delivery_opaque.settle(Err(err));
                    return;
                }
            }
        }
    }

    /// Says every broker is down (or not), as librdkafka's report and the probe do.
    #[cfg(test)]
    pub(crate) fn set_down(&self, down: bool) {
        self.reach.down.store(down, Ordering::SeqCst);
    }

    /// Whether librdkafka reports every broker down (and writes are refused).
    /// The producer's own statistics, for the metrics.
    pub(crate) fn kafka_stats(&self) -> plumbing::ops::KafkaStats {
        self.reach.stats.clone()
    }

    pub(crate) fn is_down(&self) -> bool {
        self.reach.down.load(Ordering::SeqCst)
    }

    /// How many points await Kafka's acknowledgement.
    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Waits for every queued point to be acknowledged.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(Error::Kafka)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use rdkafka::ClientConfig;

    use super::*;

    fn points(n: usize) -> Vec<Point> {
        (0..n).map(|i| Point { metric: "m".into(), tags: BTreeMap::new(), timestamp_ns: i as i64, value: 1.0 }).collect()
    }

    /// No broker listens on port 1 of loopback, so sends wait for their delivery timeout (`timeout_ms`):
    /// the points stay in flight as long as the test needs.
    /// With `noticed` false the sink is not told that every broker is down, so that its writes wait in
    /// flight rather than being refused.
    pub(crate) fn unreachable_sink(max_in_flight: usize, noticed: bool, timeout_ms: u32) -> PointSink {
        let reach = Reachability::default();
        let producer: Producer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", timeout_ms.to_string())
            .create_with_context(reach.clone())
            .expect("a producer is created without contacting the broker");
        PointSink::new(producer, if noticed { reach } else { Reachability::default() }, "t".into(), "d".into(), max_in_flight)
    }

    #[tokio::test]
    async fn with_every_broker_down_a_write_is_refused_at_once() {
        let sink = unreachable_sink(5, true, 60_000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !sink.reach.down.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "librdkafka never reported every broker down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(sink.write(&points(1), &[], None).await, Err(Error::KafkaDown)));
        assert_eq!(sink.in_flight(), 0, "nothing was queued");
    }

    #[tokio::test]
    async fn not_ready_while_every_broker_is_down() {
        // The sink's own flag, not the producer's: the test says when every broker is down and when
        // one answers again (librdkafka's report of the first is the test above).
        let sink = unreachable_sink(5, false, 60_000);
        let readiness = Readiness::ready();
        let shutdown = plumbing::Shutdown::new();
        let probe = {
            let (sink, readiness, shutdown) = (sink.clone(), readiness.clone(), shutdown.clone());
            tokio::spawn(async move { sink.probe(shutdown, readiness).await })
        };
        let until = |want: bool| {
            let readiness = readiness.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while readiness.is_ready() != want {
                    assert!(tokio::time::Instant::now() < deadline, "readiness never became {want}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        sink.reach.down.store(true, Ordering::SeqCst);
        until(false).await;
        // As when the probe's metadata request is answered again.
        sink.reach.down.store(false, Ordering::SeqCst);
        until(true).await;
        shutdown.cancel();
        probe.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_past_the_room_left_is_refused_whole_and_the_room_returns_when_kafka_answers() {
        let sink = unreachable_sink(5, false, 1_500);
        let stuck = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.write(&points(3), &[], None).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sink.in_flight() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the first batch never went in flight");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match sink.write(&points(3), &[], None).await {
            Err(Error::Overloaded { points: 3, in_flight: 3, limit: 5 }) => {}
            other => panic!("expected an overload refusal, got {other:?}"),
        }
        assert_eq!(sink.in_flight(), 3, "the refused batch took no room");
        // A client that went away leaves its points in librdkafka's queue: their room stays taken
        // until Kafka answers for them (here, the delivery timeout), then returns.
        stuck.abort();
        assert!(stuck.await.unwrap_err().is_cancelled());
        assert_eq!(sink.in_flight(), 3, "the abandoned points are still queued");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while sink.in_flight() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the room never returned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The room is whole again, and a write that times out says how much of it failed.
        match sink.write(&points(5), &[], None).await {
            Err(Error::Delivery { failed: 5, total: 5, .. }) => {}
            other => panic!("expected a delivery failure, got {other:?}"),
        }
        assert_eq!(sink.in_flight(), 0);
    }
}
