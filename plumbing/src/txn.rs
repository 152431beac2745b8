//! The exactly-once output: a transactional producer whose every call has a deadline, and which is
//! destroyed and created anew (fencing its former self) after a fatal or timed-out transactional error,
//! since librdkafka does not protect a producer that carries on after such an error against a delayed
//! commit (the anomaly Jepsen found).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::ops::KafkaStats;

/// Marks a producer broken when librdkafka reports a fatal error, so that no offset is committed for
/// output that may never arrive; and hands librdkafka's statistics (queue depth) to the metrics.
#[derive(Debug, Default, Clone)]
pub struct ProducerHealth {
    fatal: Arc<AtomicBool>,
    /// Where the statistics go, if anywhere.
    stats: Option<KafkaStats>,
    /// Set once the producer is replaced: a retired producer (still alive while a stuck call holds it)
    /// must not report beside its successor under the same labels.
    retired: Arc<AtomicBool>,
    /// librdkafka's name of the client (`id#producer-n`), as its statistics give it.
    name: Arc<std::sync::Mutex<String>>,
}

impl ProducerHealth {
    /// Reports the producer's statistics to `stats`; its configuration needs
    /// [`crate::kafka::with_statistics`] for librdkafka to emit any.
    pub fn reporting(stats: KafkaStats) -> Self {
        Self { stats: Some(stats), ..Self::default() }
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }

    /// Stops reporting, and forgets what the producer reported.
    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        if let Some(stats) = &self.stats {
            stats.forget(&self.name.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }
}

impl ClientContext for ProducerHealth {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        if let Some(stats) = self.stats.as_ref().filter(|_| !self.retired.load(Ordering::SeqCst)) {
            statistics.name.clone_into(&mut self.name.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            stats.record(statistics);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.fatal.store(true, Ordering::SeqCst);
            tracing::error!(error = %error, reason, "fatal producer error");
        } else {
            tracing::warn!(error = %error, reason, "producer error; librdkafka recovers");
        }
    }
}

/// How a failed commit leaves the transaction.
#[derive(Debug)]
pub enum Failed {
    /// Aborted: nothing of it is visible; the producer is usable.
    Aborted(KafkaError),
    /// The producer was replaced by a fresh one, which fenced the old and aborted its transaction.
    Replaced(KafkaError),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Aborted(err) => write!(f, "aborted after {err}"),
            Self::Replaced(err) => write!(f, "producer replaced after {err}"),
        }
    }
}

/// How long past its own timeout `send_offsets_to_transaction` may take before it counts as stuck.
const OFFSETS_GRACE: Duration = Duration::from_secs(2);

/// How long [`Transactions::new`] keeps retrying an `init_transactions` that failed retriably: the
/// coordinator unreachable or not yet elected, as while a broker restarts or a fresh cluster creates
/// its transaction state topic. Kafka Streams' default `task.timeout.ms`, for the same situation.
const INIT_PATIENCE: Duration = Duration::from_secs(300);
/// The pause between two attempts, so that an attempt failing at once does not spin.
const INIT_BACKOFF: Duration = Duration::from_millis(500);

pub struct Transactions {
    config: ClientConfig,
    timeout: Duration,
    producer: FutureProducer<ProducerHealth>,
    /// The producer's context, to retire it when it is replaced.
    health: ProducerHealth,
    open: bool,
    stats: KafkaStats,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions").field("open", &self.open).finish_non_exhaustive()
    }
}

impl Transactions {
    /// Creates the producer and registers its transactional id, fencing any earlier producer with it.
    /// A service starting while a broker is down waits for the transaction coordinator, for up to
    /// five minutes, rather than exiting. The producer, and each that replaces it, reports its
    /// statistics to `stats`.
    pub fn new(mut config: ClientConfig, timeout: Duration, stats: KafkaStats) -> KafkaResult<Self> {
        crate::kafka::with_statistics(&mut config);
        let (producer, health) = Self::create(&config, timeout, &stats, INIT_PATIENCE)?;
        Ok(Self { config, timeout, producer, health, open: false, stats })
    }

    /// A registered producer; retriable failures of the registration are retried for `patience`.
    fn create(
        config: &ClientConfig,
        timeout: Duration,
        stats: &KafkaStats,
        patience: Duration,
    ) -> KafkaResult<(FutureProducer<ProducerHealth>, ProducerHealth)> {
        let health = ProducerHealth::reporting(stats.clone());
        let producer: FutureProducer<ProducerHealth> = config.create_with_context(health.clone())?;
        let started = std::time::Instant::now();
        loop {
            // librdkafka allows calling init_transactions again after a retriable error (a timeout).
            match producer.init_transactions(timeout) {
                Err(KafkaError::Transaction(err)) if err.is_retriable() && started.elapsed() + INIT_BACKOFF < patience => {
                    tracing::warn!(error = %err, waited = ?started.elapsed(), "transaction coordinator unavailable; retrying");
                    std::thread::sleep(INIT_BACKOFF);
                }
                registered => return registered.map(|()| (producer, health)),
            }
        }
    }

    /// Sends one record inside the open transaction, opening one if needed. Its delivery need not be
    /// awaited: commit_transaction fails if any record of the transaction was not delivered.
    pub fn send(&mut self, record: FutureRecord<'_, str, [u8]>) -> Result<DeliveryFuture, KafkaError> {
        if !self.open {
            // Open before the call: if it fails, `fail` aborts or replaces whatever state it left.
            self.open = true;
            self.producer.begin_transaction()?;
        }
        self.producer.send_result(record).map_err(|(err, _)| err)
    }


    /// `send`, waiting (blocking the thread) for room while the producer's queue is full, until
    /// `deadline`.
    pub fn send_waiting<'a>(&mut self, make: impl Fn() -> FutureRecord<'a, str, [u8]>, deadline: std::time::Instant) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.send(make()) {
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                sent => return sent,
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Commits the open transaction together with the input `offsets` of `group`. On failure the
    /// transaction is gone (aborted, or fenced by a fresh producer) and the caller must rewind its input.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: ConsumerGroupMetadata,
    ) -> std::result::Result<(), Failed> {
        if !self.open {
            return Ok(());
        }
        let result = (|| {
            if offsets.count() > 0 {
                self.send_offsets(offsets, group)?;
            }
            self.producer.commit_transaction(self.timeout)
        })();
        match result {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// `send_offsets_to_transaction` within the deadline. librdkafka does not enforce that call's timeout
    /// while the group coordinator is down or has moved (librdkafka issues 5456 and 5511): it can block
    /// forever, as it did here when a broker was killed. So the call runs on a thread of its own; past
    /// the deadline it counts as timed out, and `fail` replaces the producer, whose successor fences
    /// it (the stuck call can then only fail). The thread is left to end whenever librdkafka lets it.
    fn send_offsets(&self, offsets: &TopicPartitionList, group: ConsumerGroupMetadata) -> KafkaResult<()> {
        let (producer, offsets, timeout) = (self.producer.clone(), offsets.clone(), self.timeout);
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("txn-offsets".into())
            .spawn(move || {
                // The receiver is gone only if the deadline passed; nobody waits for this answer then.
                let _ = done.send(producer.send_offsets_to_transaction(&offsets, &group, timeout));
            })
            .map_err(|_| KafkaError::Canceled)?;
        answer.recv_timeout(timeout + OFFSETS_GRACE).unwrap_or_else(|_| {
            tracing::warn!(?timeout, "send_offsets_to_transaction passed its deadline; giving up on this producer");
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::OperationTimedOut))
        })
    }

    /// Aborts the open transaction (on lost partitions, or after a failed commit).
    pub fn abort(&mut self) -> std::result::Result<(), Failed> {
        if !self.open {
            return Ok(());
        }
        match self.producer.abort_transaction(self.timeout) {
            Ok(()) => {
                self.open = false;
                Ok(())
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// After a failed call: abort when the error allows it, otherwise replace the producer.
    pub fn fail(&mut self, err: KafkaError) -> Failed {
        let abortable = matches!(&err, KafkaError::Transaction(e) if e.txn_requires_abort() && !e.is_fatal());
        if abortable && self.producer.abort_transaction(self.timeout).is_ok() {
            self.open = false;
            tracing::warn!(error = %err, "transaction aborted");
            return Failed::Aborted(err);
        }
        tracing::warn!(error = %err, "transactional producer replaced after a fatal or timed-out call");
        self.open = false;
        // One attempt: the caller's loop must get back to its consumer; its next call retries.
        match Self::create(&self.config, self.timeout, &self.stats, Duration::ZERO) {
            Ok((producer, health)) => {
                self.health.retire();
                (self.producer, self.health) = (producer, health);
            }
            // The old producer stays; the next transactional call fails and comes back here to try again.
            Err(create) => tracing::error!(error = %create, "transactional producer could not be recreated"),
        }
        Failed::Replaced(err)
    }
}

/// Waits (blocking the thread) for `deliveries`: one past the highest offset written to each
/// partition, or the first failure.
pub fn settled(deliveries: impl IntoIterator<Item = DeliveryFuture>) -> Result<std::collections::HashMap<i32, i64>, KafkaError> {
    let mut ends = std::collections::HashMap::new();
    for delivery in deliveries {
        // Bounded by the producer's message timeout (the transaction timeout, when transactional).
        match futures::executor::block_on(delivery) {
            Ok(Ok(delivered)) => {
                let end = ends.entry(delivered.partition).or_insert(0);
                *end = (*end).max(delivered.offset + 1);
            }
            Ok(Err((err, _))) => return Err(err),
            Err(_canceled) => return Err(KafkaError::Canceled),
        }
    }
    Ok(ends)
}

/// When a consume-transform-produce loop commits. Every `interval`: that bounds what a failed
/// transaction replays, and how often every changed piece of state is written to the changelog again.
/// And sooner for output a reader waits for (a closed window, a changed alert): once the input is
/// drained, so that the other partitions' results of the same moment go in the same commit; or once
/// such output has waited a twentieth of the interval, so that a busy input cannot hold it back. A
/// result therefore never sits out the interval, which can be long, and cheap, for that reason.
#[derive(Debug)]
pub struct CommitSchedule {
    tick: tokio::time::Interval,
    /// The least time between two commits for a drained input, and the most that urgent output waits.
    spacing: Duration,
    last: tokio::time::Instant,
    /// Since when urgent output has waited, if any is in the open transaction.
    urgent_since: Option<tokio::time::Instant>,
}

impl CommitSchedule {
    /// What share of the interval the spacing is.
    const SPACING_DIVISOR: u32 = 20;

    pub fn new(interval: Duration) -> Self {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, spacing: interval / Self::SPACING_DIVISOR, last: tokio::time::Instant::now(), urgent_since: None }
    }

    /// Output a reader waits for is in the open transaction.
    pub fn urge(&mut self) {
        self.urgent_since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Resolves at the next regular commit.
    pub async fn tick(&mut self) {
        self.tick.tick().await;
    }

    /// Resolves once urgent output may be committed early, the spacing after the last commit; never,
    /// without urgent output. Placed below the consumer's `recv` in a `biased` select it wins only when
    /// no message is ready, which is what "the input is drained" means here. Like
    /// [`CommitSchedule::overdue`], it borrows nothing, so that both can be made before a `select!`
    /// that also polls [`CommitSchedule::tick`].
    pub fn drained(&self) -> impl Future<Output = ()> + use<> {
        sleep_until(self.urgent_since.map(|_| self.last + self.spacing))
    }

    /// Resolves once urgent output has waited the spacing, whether or not the input is drained; placed
    /// above the consumer's `recv`.
    pub fn overdue(&self) -> impl Future<Output = ()> + use<> {
        sleep_until(self.urgent_since.map(|since| since + self.spacing))
    }

    /// A commit was made (or tried), on whichever cue: the next regular one is a whole interval away.
    pub fn committed(&mut self) {
        self.urgent_since = None;
        self.last = tokio::time::Instant::now();
        self.tick.reset();
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `future` has resolved by the time the test's runtime has nothing else to do.
    async fn resolved(future: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::ZERO, future).await.is_ok()
    }

    #[tokio::test]
    async fn only_urgent_output_commits_early() {
        let mut schedule = CommitSchedule::new(Duration::from_secs(3600));
        schedule.last -= Duration::from_secs(600);
        assert!(!resolved(schedule.drained()).await, "nothing urgent: no early commit");
        assert!(!resolved(schedule.overdue()).await);
        schedule.urge();
        assert!(resolved(schedule.drained()).await, "urgent, and the last commit is past the spacing (3 min)");
        assert!(!resolved(schedule.overdue()).await, "the urgent output has not waited the spacing yet");
        schedule.committed();
        assert!(!resolved(schedule.drained()).await, "the commit took the urgent output");
        schedule.urge();
        assert!(!resolved(schedule.drained()).await, "urgent, but the last commit was just now");
    }

    #[tokio::test]
    async fn urgent_output_that_waited_the_spacing_is_overdue() {
        let mut schedule = CommitSchedule::new(Duration::from_secs(3600));
        schedule.urge();
        schedule.urgent_since = schedule.urgent_since.map(|since| since - Duration::from_secs(180));
        assert!(resolved(schedule.overdue()).await);
        schedule.urge();
        assert!(resolved(schedule.overdue()).await, "a later urge keeps the earliest wait");
        schedule.committed();
        assert!(!resolved(schedule.overdue()).await);
    }
}
