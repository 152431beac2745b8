//! Operating Runnel: every service answers `/livez`, `/readyz` and `/metrics` on its ops listener. The
//! metrics count exactly what the oracle says a run did (points accepted and refused, merged, late,
//! windows emitted, rows made durable); a processor is not ready while its group cannot assign it
//! partitions, and ready once it has them; a real Prometheus (Debian's package) scrapes every service
//! and answers a query with the same counts; and with an OTLP endpoint set, the same metrics are pushed
//! to it.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::net::SocketAddr;
use std::time::Duration;

use e2e::oracle::{S, Topics, data, expected, point, series};
use e2e::services::{collector_settings, processor_settings, store_settings, write};
use e2e::{Running, eventually, kafka, now_ns, unique};
use proto::v1::WriteRequest;
use proto::v1::ingest_service_client::IngestServiceClient;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// GET `path` of `addr`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let reply = client.get(format!("http://{addr}{path}")).send().await.unwrap_or_else(|err| panic!("GET {addr}{path}: {err}"));
    (reply.status().as_u16(), reply.text().await.unwrap())
}

/// The value of the sample `name{labels}` (exactly as written, labels in their order) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `addr`'s metrics until `series` has the value `want`; panics with the last scrape if it never does.
async fn until_sample(addr: SocketAddr, series: &str, want: f64) {
    eprintln!("waiting for {series} = {want} at {addr}");
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, series) == Some(want) {
            return;
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{series} never became {want} at {addr}; the last scrape:\n{last}");
}

struct Pipeline {
    /// gRPC, HTTP and ops.
    collector: (SocketAddr, SocketAddr, SocketAddr),
    processor: SocketAddr,
    store: SocketAddr,
    analyzer: SocketAddr,
    running: (Running<collector::Error>, Running<processor::Error>, Running<store::Error>, Running<analyzer::Error>),
    store_path: std::path::PathBuf,
    rules: std::path::PathBuf,
}

/// The four services in-process on `topics`; (gRPC, ops) for the collector, ops for the others.
async fn start(topics: &Topics) -> Pipeline {
    let store_path = std::env::temp_dir().join(unique("runnel-ops-store"));
    let app = store::App::build(store_settings(topics, &unique("e2e-ops-store"), &store_path)).await.unwrap();
    let store = app.ops_addr();
    let store_running = Running::spawn(|shutdown| app.run(shutdown));
    // Windows close by event time only, so that the oracle knows exactly which have closed.
    let mut settings = processor_settings(topics, &unique("e2e-ops-processor"));
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.unwrap();
    let processor = app.ops_addr();
    let processor_running = Running::spawn(|shutdown| app.run(shutdown));
    let (mut settings, rules) = e2e::analyzer_settings("");
    settings.topics.aggregates = topics.aggregates.clone();
    settings.topics.alerts = topics.alerts.clone();
    let app = analyzer::App::build(settings).await.unwrap();
    let analyzer = app.ops_addr();
    let analyzer_running = Running::spawn(|shutdown| app.run(shutdown));
    let settings = collector_settings(topics);
    let app = collector::App::build(settings).await.unwrap();
    let collector = (app.grpc_addr(), app.http_addr(), app.ops_addr());
    let collector_running = Running::spawn(|shutdown| app.run(shutdown));
    Pipeline {
        collector,
        processor,
        store,
        analyzer,
        running: (collector_running, processor_running, store_running, analyzer_running),
        store_path,
        rules,
    }
}

impl Pipeline {
    async fn stop(self) {
        let (collector, processor, store, analyzer) = self.running;
        collector.stop().await;
        processor.stop().await;
        analyzer.stop().await;
        store.stop().await;
        std::fs::remove_dir_all(&self.store_path).unwrap();
        std::fs::remove_file(&self.rules).unwrap();
    }

    fn ops(&self) -> [(&'static str, SocketAddr); 4] {
        [("collector", self.collector.2), ("processor", self.processor), ("store", self.store), ("analyzer", self.analyzer)]
    }
}

/// The Runnel and process metrics the docker-compose deployment's Grafana dashboard queries.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards/runnel.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names = regex::Regex::new(r"\b(?:runnel|process)_[a-z_]+").unwrap();
    let mut metrics = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            metrics.extend(names.find_iter(target["expr"].as_str().unwrap()).map(|m| m.as_str().to_owned()));
        }
    }
    assert!(metrics.len() > 10, "{metrics:?}");
    metrics
}

/// Writes the oracle's data (and one refused batch), then reads every service's metrics back: each
/// count is the oracle's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_liveness_readiness_and_metrics_that_count_exactly() {
    let topics = Topics::unique(2);
    let pipeline = start(&topics).await;
    for (name, addr) in pipeline.ops() {
        assert_eq!(get(addr, "/livez").await, (200, "ok\n".to_owned()), "{name}");
        eventually(&format!("{name} is ready"), Duration::from_secs(60), || async {
            (get(addr, "/readyz").await == (200, "ready\n".to_owned())).then_some(())
        })
        .await;
    }

    let base = (now_ns() / (60 * S) - 10) * 60 * S;
    let (a, b, c) = (series("ops", &[("host", "a")]), series("ops", &[("host", "b")]), series("ops", &[("host", "c")]));
    let data = data(base, &a, &b, &c);
    let windows: usize = expected(base, &data).values().map(Vec::len).sum();
    write(pipeline.collector.0, &data.sent).await;
    // A batch refused whole: its second point has no metric.
    let mut client = IngestServiceClient::connect(format!("http://{}", pipeline.collector.0)).await.unwrap();
    let mut nameless = point(&a, base, 1.0);
    nameless.metric.clear();
    let refused = client.write(WriteRequest { points: vec![point(&a, base, 1.0), nameless] }).await.unwrap_err();
    assert_eq!(refused.code(), proto::tonic::Code::InvalidArgument);
    // Requests refused before a batch is decoded count by their protocol and reason too.
    let http = reqwest::Client::new();
    let post = |path: &str, headers: &[(&str, &str)], body: &'static [u8]| {
        let mut request = http.post(format!("http://{}{path}", pipeline.collector.1)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post("/api/v2/write", &[("content-encoding", "gzip")], b"not gzip at all").await, 400);
    assert_eq!(post("/api/v1/points", &[("content-encoding", "br")], b"{}").await, 415);
    assert_eq!(post("/api/v1/points", &[], br#"{"points": 7}"#).await, 400);
    assert_eq!(post("/v1/metrics", &[("content-type", "application/json")], b"{}").await, 415);
    assert_eq!(post("/api/v1/write", &[], b"not snappy").await, 400);

    let sent = data.sent.len() as f64;
    let collector = pipeline.collector.2;
    for (protocol, outcome, n) in [
        ("line_protocol", "bad_request", 1.0),
        ("json", "unsupported_encoding", 1.0),
        ("json", "bad_request", 1.0),
        ("otlp", "unsupported_media_type", 1.0),
        ("remote_write", "bad_request", 1.0),
        ("line_protocol", "written", 0.0),
    ] {
        until_sample(collector, &format!(r#"runnel_collector_requests_total{{protocol="{protocol}",outcome="{outcome}"}}"#), n).await;
    }
    until_sample(collector, r#"runnel_collector_points_total{protocol="grpc",outcome="accepted"}"#, sent).await;
    until_sample(collector, r#"runnel_collector_points_total{protocol="grpc",outcome="refused"}"#, 2.0).await;
    let batches = data.sent.chunks(20).count() as f64;
    until_sample(collector, r#"runnel_collector_requests_total{protocol="grpc",outcome="written"}"#, batches).await;
    until_sample(collector, r#"runnel_collector_requests_total{protocol="grpc",outcome="invalid"}"#, 1.0).await;
    until_sample(collector, "runnel_collector_in_flight_points", 0.0).await;

    // Every point but the late one is merged; the late one is dead-lettered; every closed window is
    // emitted once (no rewind in a clean run).
    let processor = pipeline.processor;
    until_sample(processor, "runnel_processor_points_total", sent - 1.0).await;
    until_sample(processor, "runnel_processor_late_points_total", 1.0).await;
    until_sample(processor, "runnel_processor_dead_letters_total", 1.0).await;
    until_sample(processor, "runnel_processor_windows_emitted_total", windows as f64).await;
    until_sample(processor, "runnel_processor_rewinds_total", 0.0).await;
    until_sample(processor, "runnel_processor_assigned_partitions", 2.0).await;
    until_sample(processor, "runnel_processor_window_close_to_commit_seconds_count", windows as f64).await;
    // librdkafka's statistics (every 5 s): the processor's consumer has read both partitions to the end.
    for partition in 0..2 {
        let lag = format!(
            r#"runnel_kafka_consumer_lag_messages{{client="runnel-processor",type="consumer",topic="{}",partition="{partition}"}}"#,
            topics.points.name
        );
        until_sample(processor, &lag, 0.0).await;
    }

    // The store holds every point written and every window emitted.
    until_sample(pipeline.store, r#"runnel_store_rows_total{kind="points"}"#, sent).await;
    until_sample(pipeline.store, r#"runnel_store_rows_total{kind="aggregates"}"#, windows as f64).await;
    let (_, text) = get(pipeline.store, "/metrics").await;
    assert!(text.contains("# TYPE runnel_store_flush_seconds histogram"), "{text}");

    // The analyzer has read every window (the empty rule set raises no alert).
    until_sample(pipeline.analyzer, "runnel_analyzer_records_read_total", windows as f64).await;
    until_sample(pipeline.analyzer, r#"runnel_analyzer_alert_changes_total{state="firing"}"#, 0.0).await;

    // Every service reports its process, from the OS's accounting.
    let mut scraped = String::new();
    // librdkafka reports the collector's producer every 5 s.
    until_sample(collector, r#"runnel_kafka_producer_queue_messages{client="runnel-collector",type="producer"}"#, 0.0).await;
    // And the processor's and the analyzer's transactional producers: every message sent, none queued.
    until_sample(processor, r#"runnel_kafka_producer_queue_messages{client="runnel-processor",type="producer"}"#, 0.0).await;
    let (_, text) = get(processor, "/metrics").await;
    let sent_by_processor = sample(&text, r#"runnel_kafka_producer_messages_total{client="runnel-processor",type="producer"}"#);
    // At least the aggregates and the dead letter; the changelog and the commit markers besides.
    assert!(sent_by_processor.is_some_and(|n| n >= windows as f64 + 1.0), "{text}");
    until_sample(pipeline.analyzer, r#"runnel_kafka_producer_queue_messages{client="runnel-analyzer",type="producer"}"#, 0.0).await;
    for (name, addr) in pipeline.ops() {
        let (_, text) = get(addr, "/metrics").await;
        assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|cpu| cpu > 0.0), "{name}:\n{text}");
        assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6), "{name}:\n{text}");
        assert!(text.ends_with("# EOF\n"), "{name}: OpenMetrics text ends with # EOF");
        scraped.push_str(&text);
    }
    // Every series the Grafana dashboard queries is one the services expose.
    for metric in dashboard_metrics() {
        let exposed = scraped.lines().any(|line| line.strip_prefix(metric.as_str()).is_some_and(|rest| rest.starts_with([' ', '{'])));
        assert!(exposed, "the dashboard queries {metric}, which no service exposes");
    }
    pipeline.stop().await;
}

/// A member of `group` that takes every partition of `topic` and then never polls: a rebalance that
/// would give a newcomer partitions waits for it to rejoin, up to its rebalance timeout (5 minutes).
async fn blocker(group: &str, topic: &plumbing::kafka::TopicSettings) -> BaseConsumer {
    kafka().ensure_topics(&[topic]).await.unwrap();
    let mut config = kafka().consumer("e2e-blocker", group);
    config.set("max.poll.interval.ms", "300000").set("session.timeout.ms", "45000");
    let blocker: BaseConsumer = config.create().unwrap();
    blocker.subscribe(&[&topic.name]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while blocker.assignment().unwrap().count() < topic.partitions as usize {
        assert!(std::time::Instant::now() < deadline, "the blocker never got the partitions");
        if let Some(Err(err)) = blocker.poll(Duration::from_millis(100)) {
            panic!("blocker: {err}");
        }
    }
    blocker
}

/// The service at `ops` serves, but answers 503 on `/readyz` for 3 s on end.
async fn serving_but_not_ready(ops: SocketAddr) {
    let serving = eventually("the ops listener answers", Duration::from_secs(30), || async {
        reqwest::get(format!("http://{ops}/livez")).await.ok().map(drop)
    });
    serving.await;
    for _ in 0..30 {
        assert_eq!(get(ops, "/readyz").await, (503, "not ready\n".to_owned()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` at `ops` turns 200.
async fn becomes_ready(ops: SocketAddr) {
    eventually("the service is ready", Duration::from_secs(60), || async {
        (get(ops, "/readyz").await == (200, "ready\n".to_owned())).then_some(())
    })
    .await;
}

/// A member of the processor's group that holds every partition and never polls keeps a new processor
/// from being assigned any until it leaves: the processor answers 503 on `/readyz` all that time, and
/// 200 once the partitions are its own and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_is_ready_only_once_its_partitions_are_assigned() {
    let topics = Topics::unique(2);
    let group = unique("e2e-ops-ready");
    let blocker = blocker(&group, &topics.points).await;
    let app = processor::App::build(processor_settings(&topics, &group)).await.unwrap();
    let (ops, stats) = (app.ops_addr(), app.stats());
    let running = Running::spawn(|shutdown| app.run(shutdown));
    // Serving, but not ready: the group cannot finish its rebalance while the blocker does not rejoin.
    serving_but_not_ready(ops).await;
    assert_eq!(stats.assignments.load(std::sync::atomic::Ordering::SeqCst), 0, "no assignment while the blocker holds");

    // The blocker leaves the group: the processor gets both partitions and becomes ready.
    drop(blocker);
    becomes_ready(ops).await;
    until_sample(ops, "runnel_processor_assigned_partitions", 2.0).await;
    running.stop().await;
}

/// The store is ready once every kind's group assigned it partitions: a blocker in the aggregates'
/// group alone (the points' and alerts' groups assign at once) keeps it not ready until it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_is_ready_only_once_every_kind_is_assigned() {
    let topics = Topics::unique(2);
    let group = unique("e2e-ops-ready-store");
    let blocker = blocker(&format!("{group}.aggregates"), &topics.aggregates).await;
    let path = std::env::temp_dir().join(unique("runnel-ops-ready-store"));
    let app = store::App::build(store_settings(&topics, &group, &path)).await.unwrap();
    let (ops, stats) = (app.ops_addr(), app.stats(store::Kind::Aggregates));
    let running = Running::spawn(|shutdown| app.run(shutdown));
    serving_but_not_ready(ops).await;
    assert_eq!(stats.assignments.load(std::sync::atomic::Ordering::SeqCst), 0, "no aggregates assignment while the blocker holds");
    drop(blocker);
    becomes_ready(ops).await;
    running.stop().await;
    std::fs::remove_dir_all(&path).unwrap();
}

/// The analyzer is ready once its group assigned it the aggregates' partitions and it restored their
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyzer_is_ready_only_once_its_partitions_are_assigned() {
    let (settings, rules) = e2e::analyzer_settings("");
    let blocker = blocker(&settings.group_id, &settings.topics.aggregates).await;
    let app = analyzer::App::build(settings).await.unwrap();
    let ops = app.ops_addr();
    let running = Running::spawn(|shutdown| app.run(shutdown));
    serving_but_not_ready(ops).await;
    drop(blocker);
    becomes_ready(ops).await;
    running.stop().await;
    std::fs::remove_file(&rules).unwrap();
}

/// A free port on loopback, for a program that cannot report the port it bound (Prometheus).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Prometheus server the test command installs (Debian's `prometheus` package).
fn prometheus_binary() -> std::path::PathBuf {
    let path = std::env::var_os("PROMETHEUS").map_or_else(|| std::path::PathBuf::from("/usr/bin/prometheus"), Into::into);
    assert!(
        path.exists(),
        "{} not found: this test needs a Prometheus server. deploy/test.sh installs Debian's prometheus package; \
         elsewhere, install it or set PROMETHEUS to its path",
        path.display()
    );
    path
}

/// Asks Prometheus's HTTP API for `query`'s single value; none until it has one.
async fn prometheus_value(port: u16, query: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let body = reqwest::Client::new().get(url).query(&[("query", query)]).send().await.ok()?.bytes().await.ok()?;
    let reply: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let result = reply["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// A real Prometheus scrapes all four services every second; its queries give the counts the services
/// counted, and every target is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service() {
    let binary = prometheus_binary();
    let topics = Topics::unique(1);
    let pipeline = start(&topics).await;
    let dir = std::env::temp_dir().join(unique("runnel-prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = pipeline.ops().map(|(name, addr)| format!("  - job_name: {name}\n    static_configs:\n      - targets: ['{addr}']\n"));
    let config = format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{}", targets.concat());
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prometheus = std::process::Command::new(binary)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let a = series("scraped", &[("host", "a")]);
    let points: Vec<_> = (0..100).map(|i| point(&a, now_ns() - 120 * S + i * S, i as f64)).collect();
    write(pipeline.collector.0, &points).await;
    for job in ["collector", "processor", "store", "analyzer"] {
        let query = format!(r#"up{{job="{job}"}}"#);
        eventually(&format!("prometheus scrapes the {job}"), Duration::from_secs(60), || async {
            (prometheus_value(port, &query).await == Some(1.0)).then_some(())
        })
        .await;
    }
    let accepted = r#"runnel_collector_points_total{job="collector",protocol="grpc",outcome="accepted"}"#;
    eventually("prometheus has the collector's count", Duration::from_secs(60), || async {
        (prometheus_value(port, accepted).await == Some(100.0)).then_some(())
    })
    .await;
    let merged = r#"runnel_processor_points_total{job="processor"}"#;
    eventually("prometheus has the processor's count", Duration::from_secs(60), || async {
        (prometheus_value(port, merged).await == Some(100.0)).then_some(())
    })
    .await;
    let rows = r#"runnel_store_rows_total{job="store",kind="points"}"#;
    eventually("prometheus has the store's count", Duration::from_secs(60), || async {
        (prometheus_value(port, rows).await == Some(100.0)).then_some(())
    })
    .await;

    prometheus.kill().unwrap();
    prometheus.wait().unwrap();
    pipeline.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An OTLP metrics receiver that keeps the latest value of every number metric it was sent, by name.
#[derive(Debug, Clone, Default)]
struct MetricsReceiver(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, f64>>>);

#[proto::tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: proto::tonic::Request<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>,
    ) -> Result<proto::tonic::Response<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse>, proto::tonic::Status> {
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
        let mut latest = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            let service = e2e::otlp_service(resource.resource.as_ref());
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let points = match metric.data {
                    Some(Data::Sum(sum)) if sum.is_monotonic => sum.data_points,
                    Some(Data::Gauge(gauge)) => gauge.data_points,
                    _ => continue,
                };
                let total: f64 = points.iter().filter_map(|p| match p.value { Some(Value::AsDouble(v)) => Some(v), Some(Value::AsInt(v)) => Some(v as f64), None => None }).sum();
                latest.insert(format!("{service}/{}", metric.name), total);
            }
        }
        Ok(proto::tonic::Response::new(Default::default()))
    }
}

/// With `telemetry.otlp_metrics_endpoint` set, a processor pushes the metrics of `/metrics` over OTLP as well:
/// the receiver gets the count of points merged, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_pushed_over_otlp_when_an_endpoint_is_set() {
    let receiver = MetricsReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(
        proto::tonic::transport::Server::builder()
            .add_service(opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let topics = Topics::unique(1);
    kafka().ensure_topics(&[&topics.points]).await.unwrap();
    let mut settings = processor_settings(&topics, &unique("e2e-ops-otlp"));
    settings.telemetry.otlp_metrics_endpoint = endpoint;
    settings.telemetry.metrics_interval = Duration::from_millis(200);
    let app = processor::App::build(settings).await.unwrap();
    let running = Running::spawn(|shutdown| app.run(shutdown));
    let a = series("pushed", &[("host", "a")]);
    let points: Vec<_> = (0..25).map(|i| point(&a, now_ns() - 60 * S + i * S, i as f64)).collect();
    let topic = topics.points.name.clone();
    let sent = tokio::task::spawn_blocking(move || e2e::produce_points(&kafka(), points.into_iter(), &topic, 10_000)).await.unwrap();
    assert_eq!(sent, 25);
    let merged = "processor/runnel_processor_points";
    eventually("the pushed count of points merged", Duration::from_secs(60), || {
        let receiver = receiver.clone();
        async move { (receiver.0.lock().unwrap().get(merged) == Some(&25.0)).then_some(()) }
    })
    .await;
    let pushed = receiver.0.lock().unwrap().clone();
    assert!(pushed.get("processor/process_resident_memory_bytes").is_some_and(|rss| *rss > 1e6), "{pushed:?}");
    running.stop().await;
    serving.abort();
}
