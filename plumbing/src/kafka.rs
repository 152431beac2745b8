//! Kafka client settings: the one place where settings become an `rdkafka::ClientConfig`, with the
//! safety rules every service relies on, and topic creation through the admin API (brokers run with
//! auto-creation off, so a topic exists with the partition count its settings give).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use crate::config::{FieldError, check};

/// How to reach Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port...]`. `KAFKA_BROKERS` overrides it.
    pub brokers: String,
    /// Raw librdkafka options (e.g. `security.protocol`). The settings a guarantee rests on are applied
    /// after them and win, and setting one here is refused at startup.
    // An empty table does not survive the defaults layer, hence the serde default.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Deadline of admin and metadata requests.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            options: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Options a service sets itself; overriding them through `options` would break a guarantee.
const GUARDED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("acks", "producers always use acks=all"),
    ("request.required.acks", "producers always use acks=all"),
    ("enable.idempotence", "producers are always idempotent"),
    ("enable.auto.commit", "offsets are committed only after output is durable"),
    ("enable.auto.offset.store", "offsets are stored only after a message is handled"),
    ("group.id", "set the service's group_id instead"),
    ("isolation.level", "consumers always read committed data"),
    ("transactional.id", "set the processor's transactional_id instead"),
    ("transaction.timeout.ms", "set the processor's transaction_timeout instead"),
];

impl KafkaSettings {
    /// Every invalid value, keys prefixed with `prefix` (e.g. `kafka`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check(&mut errors, !self.brokers.trim().is_empty(), &format!("{prefix}.brokers"), "must name at least one broker");
        for (key, why) in GUARDED {
            check(&mut errors, !self.options.contains_key(*key), &format!("{prefix}.options.{key}"), format!("may not be set: {why}"));
        }
        check(&mut errors, !self.request_timeout.is_zero(), &format!("{prefix}.request_timeout"), "must be positive");
        errors
    }

    fn base(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("client.id", client_id);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// A producer that Kafka acknowledges only once every in-sync replica has a message, and that never
    /// writes a message twice on retry.
    pub fn producer(&self, client_id: &str) -> ClientConfig {
        let mut config = self.base(client_id);
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // The Java client's key hash: a series lands in the same partition whichever client wrote it.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("linger.ms", "5");
        config
    }

    /// [`KafkaSettings::producer`] whose local queue holds `max_queued` messages: a service that bounds
    /// the records it has in flight itself must never find librdkafka's queue (100,000 messages by
    /// default) the smaller bound, or a record it admitted would wait for room there.
    pub fn producer_holding(&self, client_id: &str, max_queued: usize) -> ClientConfig {
        let mut config = self.producer(client_id);
        config.set("queue.buffering.max.messages", max_queued.to_string());
        config
    }

    /// A transactional producer: `transactional_id` must be stable across restarts of one instance and
    /// unique among instances, so that a restarted instance fences its former self.
    pub fn transactional_producer(&self, client_id: &str, transactional_id: &str, timeout: Duration) -> ClientConfig {
        let mut config = self.producer(client_id);
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
        config
    }

    /// A consumer in `group` that reads committed data only and whose offsets move only when the service
    /// commits them explicitly, after its output is durable.
    pub fn consumer(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut config = self.base(client_id);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            // Once a partition's prefetch queue holds `queued.min.messages` (100,000), librdkafka waits
            // this long before fetching it again: 1 s by default, which caps a consumer of small
            // messages (points) near 100,000 a second per partition. 10 ms keeps the queue fed.
            .set("fetch.queue.backoff.ms", "10");
        config
    }

    /// Creates each topic that does not exist yet. A topic that exists is left as it is: its partition
    /// count may differ from the settings, which is logged, since repartitioning moves series.
    pub async fn ensure_topics(&self, topics: &[&TopicSettings]) -> Result<(), KafkaError> {
        let topics: Vec<(&TopicSettings, &[(&str, &str)])> = topics.iter().map(|t| (*t, &[][..])).collect();
        self.ensure_topics_with(&topics).await
    }

    /// [`KafkaSettings::ensure_topics`] with topic-level configs for the topics created (e.g.
    /// `cleanup.policy=compact`).
    pub async fn ensure_topics_with(&self, topics: &[(&TopicSettings, &[(&str, &str)])]) -> Result<(), KafkaError> {
        let me = self.clone();
        // Blocking for up to the request timeout: off the runtime's workers.
        tokio::task::spawn_blocking(move || me.check_access()).await.map_err(|_| KafkaError::Canceled)??;
        let admin: AdminClient<DefaultClientContext> = self.base("runnel-admin").create()?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(t, configs)| {
                configs.iter().fold(NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor)), |topic, (k, v)| topic.set(k, v))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.request_timeout));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(name) => tracing::info!(topic = %name, "topic created"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %name, "topic exists")
                }
                Err((name, code)) => {
                    tracing::error!(topic = %name, error = %code, "topic creation failed");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
        for (topic, _) in topics {
            match self.partition_count(&topic.name) {
                Ok(partitions) if partitions != topic.partitions => {
                    tracing::warn!(topic = %topic.name, partitions, configured = topic.partitions, "topic has a different partition count than configured");
                }
                Ok(_) => {}
                Err(err) => tracing::debug!(topic = %topic.name, error = %err, "partition count not known yet"),
            }
        }
        Ok(())
    }

    /// Fails with librdkafka's error when the brokers refuse this client: a wrong SASL password, a broker
    /// certificate it does not trust. The admin client never reports those (nothing serves its error
    /// events), so without this a refused service would wait for its topic creation to time out and
    /// then say only that. Waits up to the request timeout for either verdict; with neither (brokers
    /// still starting), the requests that follow wait as they always did. Blocking, as
    /// [`KafkaSettings::partition_count`].
    fn check_access(&self) -> Result<(), KafkaError> {
        use rdkafka::producer::{BaseProducer, Producer as _};
        let probe: BaseProducer<Refusal> = self.base("runnel-admin").create_with_context(Refusal::default())?;
        let deadline = std::time::Instant::now() + self.request_timeout;
        loop {
            // The cluster id arrives with the first metadata, which needs an authenticated connection.
            if probe.client().fetch_cluster_id(Duration::from_millis(200)).is_some() {
                return Ok(());
            }
            // Serves the error events, which is where a refusal shows.
            probe.poll(Duration::ZERO);
            if let Some(code) = probe.context().code() {
                return Err(KafkaError::Global(code));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    /// How many partitions `topic` has; an error when it does not exist. A topic created a moment ago may
    /// not be known to every broker yet: that is waited out for up to the request timeout.
    pub fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
        use rdkafka::consumer::Consumer as _;
        let consumer: rdkafka::consumer::BaseConsumer = self.base("runnel-admin").create()?;
        let deadline = std::time::Instant::now() + self.request_timeout;
        loop {
            let metadata = consumer.fetch_metadata(Some(topic), self.request_timeout)?;
            let found = metadata.topics().iter().find(|m| m.name() == topic);
            let code = match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX));
                }
                Some(t) => t.error().map_or(RDKafkaErrorCode::UnknownTopicOrPartition, Into::into),
                None => RDKafkaErrorCode::UnknownTopicOrPartition,
            };
            let propagating = matches!(code, RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::LeaderNotAvailable);
            if !propagating || std::time::Instant::now() >= deadline {
                return Err(KafkaError::MetadataFetch(code));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client context that remembers the first error saying the brokers refuse the client.
#[derive(Debug, Default)]
struct Refusal(std::sync::Mutex<Option<RDKafkaErrorCode>>);

impl Refusal {
    fn code(&self) -> Option<RDKafkaErrorCode> {
        self.0.lock().map_or(None, |code| *code)
    }
}

impl ClientContext for Refusal {
    fn error(&self, error: KafkaError, reason: &str) {
        use RDKafkaErrorCode::{Authentication, SSL, SaslAuthenticationFailed};
        match error.rdkafka_error_code() {
            Some(code @ (Authentication | SaslAuthenticationFailed | SSL)) => {
                // The reason names the cause (the SASL error, the certificate check that failed); the
                // code alone does not.
                tracing::error!(error = %error, reason, "kafka refused the connection");
                if let Ok(mut first) = self.0.lock() {
                    first.get_or_insert(code);
                }
            }
            _ => tracing::warn!(error = %error, reason, "kafka client error"),
        }
    }
}

/// The probe sends nothing, so there is no delivery to report.
impl rdkafka::producer::ProducerContext for Refusal {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// A topic and how it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub name: String,
    /// Partitions at creation: the most instances of a consuming service that can share the work.
    pub partitions: i32,
    pub replication_factor: i32,
}

impl TopicSettings {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), partitions: 6, replication_factor: 1 }
    }

    /// Every invalid value, keys prefixed with `prefix` (e.g. `topics.points`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let legal = !self.name.is_empty()
            && self.name.len() <= 249
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        check(&mut errors, legal, &format!("{prefix}.name"), format!("{:?} is not a legal topic name", self.name));
        check(&mut errors, self.partitions >= 1, &format!("{prefix}.partitions"), format!("{} must be at least 1", self.partitions));
        check(&mut errors, self.replication_factor >= 1, &format!("{prefix}.replication_factor"), format!("{} must be at least 1", self.replication_factor));
        errors
    }
}

/// The topic names of the contract.
pub mod topics {
    pub const POINTS: &str = "runnel.points.v1";
    pub const AGGREGATES: &str = "runnel.aggregates.v1";
    pub const ALERTS: &str = "runnel.alerts.v1";
    pub const DEADLETTER: &str = "runnel.deadletter.v1";
}

/// Sorts what a consumer's poll returned: a message, nothing (`None`: a passing error, logged), or a
/// fatal error, which ends the consumer. Only a fatal one does: the others (a broker down, a partition
/// moving) are librdkafka reporting what it is already recovering from, and a service that stopped on
/// them would turn a broker restart into an outage.
pub fn unless_transient<T>(polled: Result<T, KafkaError>) -> Result<Option<T>, KafkaError> {
    match polled {
        Ok(message) => Ok(Some(message)),
        Err(err @ KafkaError::MessageConsumptionFatal(_)) => Err(err),
        Err(err) => {
            tracing::warn!(error = %err, "consumer error; librdkafka recovers");
            Ok(None)
        }
    }
}

/// Waits up to `timeout` for the delivery of `futures`, in order; the first failure is returned.
pub async fn await_deliveries(
    futures: impl IntoIterator<Item = rdkafka::producer::DeliveryFuture>,
) -> Result<(), KafkaError> {
    for future in futures {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((err, _))) => return Err(err),
            Err(_canceled) => return Err(KafkaError::Canceled),
        }
    }
    Ok(())
}

/// Turns on librdkafka's statistics for the client `config` creates, every
/// [`crate::ops::KAFKA_STATISTICS_INTERVAL`].
pub fn with_statistics(config: &mut rdkafka::ClientConfig) -> &mut rdkafka::ClientConfig {
    config.set("statistics.interval.ms", crate::ops::KAFKA_STATISTICS_INTERVAL.as_millis().to_string())
}
