//! Operating a service: one HTTP listener per service answering `/livez`, `/readyz` and `/metrics`
//! (Prometheus text), the [`Readiness`] that `/readyz` and gRPC health both follow, the drain deadline
//! of a stop, and the metrics every service has: the process's CPU and memory, and its Kafka clients'
//! own statistics (consumer lag per partition, producer queue depth).
//!
//! A service's own counters stay plain atomics on its hot path; a [`Scraped`] collector reads them
//! when Prometheus scrapes, so being observed costs nothing per point.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Shutdown;
use crate::config::FieldError;

/// The content type of OpenMetrics text, which Prometheus asks for and parses.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How often librdkafka reports a client's statistics to its [`KafkaStats`].
pub const KAFKA_STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSettings {
    /// Address of the HTTP listener for `/livez`, `/readyz` and `/metrics` (port 0 picks a free one).
    pub listen: SocketAddr,
    /// How long a stop (SIGTERM) may take to drain in-flight work and commit before the process
    /// gives up and exits with a failure; keep it below the orchestrator's grace period.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl OpsSettings {
    /// Loopback on `port`, draining for at most 25 s (docker-compose's grace period is 30 s).
    pub fn on_port(port: u16) -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], port)), drain_timeout: Duration::from_secs(25) }
    }

    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        crate::config::check(
            &mut errors,
            !self.drain_timeout.is_zero(),
            &format!("{prefix}.drain_timeout"),
            "must be more than zero",
        );
        errors
    }
}

/// Whether the service takes traffic: what `/readyz` answers, and what gRPC health reports for the
/// server and its services. Starts not ready.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Readiness {
    /// A readiness that is ready from the start.
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set(true);
        readiness
    }

    pub fn set(&self, ready: bool) {
        if self.0.send_if_modified(|now| std::mem::replace(now, ready) != ready) {
            tracing::info!(ready, "readiness changed");
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Every change from now on, starting with the current value.
    pub fn watch(&self) -> watch::Receiver<bool> {
        let mut receiver = self.0.subscribe();
        receiver.mark_changed();
        receiver
    }
}

/// A bound, not yet serving, operations listener.
#[derive(Debug)]
pub struct OpsListener {
    listener: TcpListener,
    addr: SocketAddr,
    otlp: Option<crate::otlp_metrics::OtlpMetrics>,
}

impl OpsListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr, otlp: None })
    }

    /// Also pushes the metrics over OTLP, as `service`, when `telemetry` names a metrics endpoint.
    pub fn with_otlp(mut self, service: &'static str, telemetry: &crate::telemetry::TelemetrySettings) -> Self {
        if !telemetry.otlp_metrics_endpoint.is_empty() {
            let endpoint = telemetry.otlp_metrics_endpoint.clone();
            self.otlp = Some(crate::otlp_metrics::OtlpMetrics { endpoint, interval: telemetry.metrics_interval, service });
        }
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/livez` (200 while the process answers), `/readyz` (200 when `readiness` says so, 503
    /// otherwise) and `/metrics` (everything in `registry`, plus the process's CPU and memory) until
    /// `shutdown`.
    pub async fn serve(self, mut registry: Registry, readiness: Readiness, shutdown: Shutdown) -> std::io::Result<()> {
        registry.register_collector(Box::new(ProcessMetrics));
        let registry = Arc::new(registry);
        let pushing = self.otlp.map(|to| tokio::spawn(crate::otlp_metrics::export(Arc::clone(&registry), to, shutdown.clone())));
        let state = Arc::new((registry, readiness));
        let router = Router::new()
            .route("/livez", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(state);
        tracing::info!(addr = %self.addr, "ops serving /livez /readyz /metrics");
        // A task of its own: a service's loop joined beside this future stops yielding while input
        // waits (rdkafka's `recv` is ready at once), and would hold back every scrape and probe.
        let serving = axum::serve(self.listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        let served = tokio::spawn(serving.into_future()).await.unwrap_or_else(|err| Err(std::io::Error::other(err)));
        // The last push, with the final counts, before the process goes.
        if let Some(pushing) = pushing
            && let Err(err) = pushing.await
        {
            tracing::warn!(error = %err, "otlp metrics export task failed");
        }
        served
    }
}

type OpsState = Arc<(Arc<Registry>, Readiness)>;

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    if state.1.is_ready() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    match render(&state.0) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics not encoded: {err}\n")).into_response(),
    }
}

/// Everything in `registry` as OpenMetrics text, what `/metrics` answers.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Writes metrics at scrape time; every name is the family's name, units included, without the
/// `_total` a counter's sample gets on the wire.
#[derive(Debug)]
pub struct Scrape<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Scrape<'_> {
    /// A counter; `value` is a `u64` or an `f64` (seconds).
    pub fn counter<N: EncodeCounterValue>(&mut self, name: &str, help: &str, value: N) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        counter.encode(self.encoder.encode_descriptor(name, help, None, counter.metric_type())?)
    }

    /// A gauge; `value` is an `i64`, `u64` or `f64`.
    pub fn gauge<N: EncodeGaugeValue>(&mut self, name: &str, help: &str, value: N) -> std::fmt::Result {
        let gauge = ConstGauge::new(value);
        gauge.encode(self.encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
    }

    /// A gauge with one sample per label set; nothing at all when `samples` is empty.
    pub fn gauges<L: EncodeLabelSet, N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, N)>,
    ) -> std::fmt::Result {
        self.family(name, help, samples, ConstGauge::new)
    }

    /// A counter with one sample per label set; nothing at all when `samples` is empty.
    pub fn counters<L: EncodeLabelSet, N: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, N)>,
    ) -> std::fmt::Result {
        self.family(name, help, samples, ConstCounter::new)
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, seconds: &Seconds) -> std::fmt::Result {
        seconds.0.encode(self.encoder.encode_descriptor(name, help, None, seconds.0.metric_type())?)
    }

    /// A histogram with one set of buckets per label set; nothing at all when `samples` is empty.
    pub fn histograms<'h, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, &'h Seconds)>,
    ) -> std::fmt::Result {
        self.family(name, help, samples, |seconds: &Seconds| seconds.0.clone())
    }

    fn family<L: EncodeLabelSet, V, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
        metric: impl Fn(V) -> M,
    ) -> std::fmt::Result {
        let mut samples = samples.into_iter().map(|(labels, value)| (labels, metric(value))).peekable();
        let Some((_, first)) = samples.peek() else { return Ok(()) };
        let mut family = self.encoder.encode_descriptor(name, help, None, first.metric_type())?;
        for (labels, metric) in samples {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A latency histogram in seconds, doubling buckets from 1 ms to about 33 s. A clone observes into the
/// same histogram; `Default` lets it sit among a service's atomic counters.
#[derive(Debug, Clone)]
pub struct Seconds(Histogram);

impl Default for Seconds {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 16)))
    }
}

impl Seconds {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// A collector that reads a service's counters when scraped, through `F`.
pub struct Scraped<F>(pub F);

impl<F> std::fmt::Debug for Scraped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scraped")
    }
}

impl<F> Collector for Scraped<F>
where
    F: Fn(&mut Scrape<'_>) -> std::fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        (self.0)(&mut Scrape { encoder })
    }
}

/// The standard process metrics, from the OS's own accounting.
#[derive(Debug)]
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut scrape = Scrape { encoder };
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
            let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            let cpu = seconds(usage.user_time()) + seconds(usage.system_time());
            scrape.counter("process_cpu_seconds", "user and system CPU time the process has used", cpu)?;
        }
        if let Some(bytes) = resident_bytes() {
            scrape.gauge("process_resident_memory_bytes", "resident set size of the process", bytes)?;
        }
        Ok(())
    }
}

/// The process's resident set, from `/proc/self/status` (Linux; none elsewhere).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The latest statistics of each Kafka client that reports to it (by client name), exported as
/// `runnel_kafka_*` metrics. A client reports when its configuration has [`crate::kafka::with_statistics`] and its
/// context's `stats` calls [`KafkaStats::record`].
#[derive(Debug, Clone, Default)]
pub struct KafkaStats(Arc<Mutex<BTreeMap<String, Statistics>>>);

impl KafkaStats {
    pub fn record(&self, statistics: Statistics) {
        let mut clients = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.insert(statistics.name.clone(), statistics);
    }

    /// Forgets the client `name`: one that was dropped or replaced (a fresh transactional producer).
    pub fn forget(&self, name: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }
}

impl Collector for KafkaStats {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let clients = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut scrape = Scrape { encoder };
        let client = |s: &Statistics| vec![("client", s.client_id.clone()), ("type", s.client_type.clone())];
        // The consumer's own lag counts from the committed offset, which a transactional consumer
        // never commits through the consumer: count from what the service was handed instead, up to
        // the last stable offset (what a read_committed consumer can read). A transaction's commit
        // marker at the end counts as one message.
        let lag = clients.values().flat_map(|s| {
            s.topics.values().flat_map(move |topic| {
                topic.partitions.values().filter(|p| p.partition >= 0 && p.desired).filter_map(move |p| {
                    let position = if p.app_offset >= 0 { p.app_offset } else { p.committed_offset };
                    let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
                    (position >= 0 && end >= 0).then(|| {
                        let mut labels = client(s);
                        labels.extend([("topic", topic.topic.clone()), ("partition", p.partition.to_string())]);
                        (labels, (end - position).max(0))
                    })
                })
            })
        });
        scrape.gauges("runnel_kafka_consumer_lag_messages", "messages between what the service was handed and the end a read_committed consumer can read", lag)?;
        // A service may run several clients of one id (the store a consumer per kind, the analyzer a
        // producer per input): their figures add up under the one label set.
        let summed = |kind: &str, figure: fn(&Statistics) -> i64| {
            let mut sums = BTreeMap::<Vec<(&str, String)>, i64>::new();
            for s in clients.values().filter(|s| s.client_type == kind) {
                *sums.entry(client(s)).or_default() += figure(s).max(0);
            }
            sums
        };
        let queued = summed("producer", |s| s.msg_cnt as i64);
        scrape.gauges("runnel_kafka_producer_queue_messages", "messages the producer holds that Kafka has not acknowledged", queued)?;
        let bytes = summed("producer", |s| s.msg_size as i64);
        scrape.gauges("runnel_kafka_producer_queue_bytes", "bytes the producer holds that Kafka has not acknowledged", bytes)?;
        let sent = summed("producer", |s| s.txmsgs).into_iter().map(|(labels, n)| (labels, n as u64));
        scrape.counters("runnel_kafka_producer_messages", "messages the producer has sent to brokers", sent)?;
        let consumed = summed("consumer", |s| s.rxmsgs).into_iter().map(|(labels, n)| (labels, n as u64));
        scrape.counters("runnel_kafka_consumer_messages", "messages the consumer has fetched from brokers", consumed)?;
        Ok(())
    }
}

/// Runs `serve` until it ends; once `shutdown` is cancelled, waits at most `deadline` for it to finish
/// draining, then gives up with an error (in-flight work is abandoned; Kafka redelivers what was not
/// committed).
pub async fn drain_within<T>(
    serve: impl std::future::Future<Output = anyhow::Result<T>>,
    shutdown: &Shutdown,
    deadline: Duration,
) -> anyhow::Result<T> {
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result,
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(deadline, serve).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("did not drain within the drain timeout ({}); exiting anyway", humantime::format_duration(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        render(registry).unwrap()
    }

    #[test]
    fn scraped_counters_and_gauges_read_their_source_at_each_scrape() {
        let source = Arc::new(std::sync::atomic::AtomicU64::new(7));
        let mut registry = Registry::default();
        let read = Arc::clone(&source);
        registry.register_collector(Box::new(Scraped(move |scrape: &mut Scrape<'_>| {
            let value = read.load(std::sync::atomic::Ordering::Relaxed);
            scrape.counter("things", "things done", value)?;
            scrape.gauges("depth_messages", "depth", [(vec![("partition", "0")], 3), (vec![("partition", "1")], value as i64)])?;
            let latency = Seconds::default();
            latency.observe(Duration::from_millis(3));
            scrape.histograms("call_seconds", "latency", [([("method", "get")], &latency)])?;
            scrape.gauges("empty", "absent when it has no samples", Vec::<(Vec<(&str, &str)>, i64)>::new())
        })));
        let first = encode(&registry);
        assert!(first.contains("# TYPE things counter\n"), "{first}");
        assert!(first.contains("things_total 7\n"), "{first}");
        assert!(first.contains("depth_messages{partition=\"0\"} 3\n"), "{first}");
        assert!(first.contains("depth_messages{partition=\"1\"} 7\n"), "{first}");
        assert!(!first.contains("empty"), "{first}");
        assert!(first.contains("call_seconds_bucket{le=\"0.002\",method=\"get\"} 0\n"), "{first}");
        assert!(first.contains("call_seconds_bucket{le=\"0.004\",method=\"get\"} 1\n"), "{first}");
        assert!(first.contains("call_seconds_count{method=\"get\"} 1\n"), "{first}");
        source.store(9, std::sync::atomic::Ordering::Relaxed);
        let second = encode(&registry);
        assert!(second.contains("things_total 9\n"), "{second}");
        assert!(second.ends_with("# EOF\n"), "{second}");
    }

    /// A service joins its consume loop beside `serve`; a loop that finds input waiting never yields
    /// (rdkafka's `recv` is ready at once), and a probe must not wait for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_are_answered_while_a_joined_loop_never_yields() {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::{AtomicBool, Ordering};
        let ops = OpsListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = ops.local_addr();
        let shutdown = Shutdown::new();
        let (spinning, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        // The probe, from a thread of its own, as an orchestrator's, once the loop spins.
        let probe = {
            let (spinning, answered) = (Arc::clone(&spinning), Arc::clone(&answered));
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while !spinning.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                stream.write_all(b"GET /livez HTTP/1.1\r\nhost: ops\r\nconnection: close\r\n\r\n").unwrap();
                let mut reply = String::new();
                stream.read_to_string(&mut reply).unwrap();
                answered.store(true, Ordering::SeqCst);
                reply
            })
        };
        // The loop: it yields once (waiting for its first input), then spins without yielding until the
        // probe is answered, for at most 10 s.
        let busy = async {
            tokio::task::yield_now().await;
            spinning.store(true, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !answered.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::hint::spin_loop();
            }
            shutdown.cancel();
            answered.load(Ordering::SeqCst)
        };
        let (answered_while_busy, served) = tokio::join!(busy, ops.serve(Registry::default(), Readiness::ready(), shutdown.clone()));
        served.unwrap();
        let reply = probe.join().unwrap();
        assert!(answered_while_busy, "the probe was answered only once the loop yielded: {reply}");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[test]
    fn clients_of_one_id_add_up_and_a_forgotten_one_drops_out() {
        let producer = |name: &str, queued: u64| Statistics {
            name: name.to_owned(),
            client_id: "runnel-analyzer".to_owned(),
            client_type: "producer".to_owned(),
            msg_cnt: queued,
            txmsgs: 10,
            ..Statistics::default()
        };
        let stats = KafkaStats::default();
        stats.record(producer("runnel-analyzer#producer-1", 3));
        stats.record(producer("runnel-analyzer#producer-2", 4));
        // A later report of a client replaces its former one.
        stats.record(producer("runnel-analyzer#producer-2", 5));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(stats.clone()));
        let text = encode(&registry);
        let queue = r#"runnel_kafka_producer_queue_messages{client="runnel-analyzer",type="producer"}"#;
        assert_eq!(text.matches(queue).count(), 1, "{text}");
        assert!(text.contains(&format!("{queue} 8\n")), "{text}");
        assert!(text.contains("runnel_kafka_producer_messages_total{client=\"runnel-analyzer\",type=\"producer\"} 20\n"), "{text}");
        stats.forget("runnel-analyzer#producer-1");
        assert!(encode(&registry).contains(&format!("{queue} 5\n")));
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_metrics_has_the_process() {
        let listener = OpsListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr();
        let readiness = Readiness::default();
        let shutdown = Shutdown::new();
        let serving = tokio::spawn(listener.serve(Registry::default(), readiness.clone(), shutdown.clone()));
        let get = |path: &'static str| async move { crate::ops::tests::get(addr, path).await };
        assert_eq!(get("/livez").await.0, 200);
        assert_eq!(get("/readyz").await, (503, "not ready\n".to_owned()));
        readiness.set(true);
        assert_eq!(get("/readyz").await, (200, "ready\n".to_owned()));
        readiness.set(false);
        assert_eq!(get("/readyz").await.0, 503);
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("process_cpu_seconds_total "), "{body}");
        let rss = body.lines().find_map(|l| l.strip_prefix("process_resident_memory_bytes ")).unwrap();
        assert!(rss.parse::<i64>().unwrap() > 1 << 20, "{rss}");
        shutdown.cancel();
        serving.await.unwrap().unwrap();
    }

    /// A minimal HTTP/1.0 GET: status and body.
    pub(super) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        let status = reply[9..12].parse().unwrap();
        let body = reply.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn a_drain_past_its_deadline_is_an_error() {
        let shutdown = Shutdown::new();
        shutdown.cancel();
        let stuck = drain_within(std::future::pending::<anyhow::Result<()>>(), &shutdown, Duration::from_millis(50)).await;
        assert!(stuck.unwrap_err().to_string().contains("did not drain within the drain timeout (50ms)"));
        let quick = drain_within(async { Ok(5) }, &shutdown, Duration::from_millis(50)).await;
        assert_eq!(quick.unwrap(), 5);
    }
}
