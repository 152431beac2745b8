//! One trace across the whole pipeline: a write that carries a W3C `traceparent` is followed, through
//! the Kafka headers each service sets, from the collector's write to the window it fell into, the
//! aggregate's sending, the store keeping it, the analyzer evaluating it and the alert it raised, and
//! the store keeping that alert. The four services run as processes, each exporting over OTLP to a
//! receiver in this test; each span's parent is the span before it. Their sampling ratio is 0: a write
//! without a trace context leaves no span at all.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::oracle::{S, Topics, point, series};
use e2e::process::{Service, bin};
use e2e::{eventually, kafka, now_ns, unique};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use proto::v1::WriteRequest;
use proto::v1::ingest_service_client::IngestServiceClient;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP trace receiver that keeps every span.
#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[proto::tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: proto::tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<proto::tonic::Response<ExportTraceServiceResponse>, proto::tonic::Status> {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut kept = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = e2e::otlp_service(resource.resource.as_ref());
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|kv| (kv.key.clone(), e2e::otlp_text(kv.value.as_ref()))).collect(),
                });
            }
        }
        Ok(proto::tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

const RULES: &str = r#"
[[rules]]
name = "hot"
metric = "traced"
op = ">"
threshold = 50.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_write_is_followed_through_every_service_to_its_alert() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let serving = tokio::spawn(
        proto::tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let topics = Topics::unique(1);
    kafka().ensure_topics(&[&topics.points, &topics.aggregates, &topics.alerts, &topics.deadletter]).await.unwrap();
    let dir = std::env::temp_dir().join(unique("runnel-traces"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    // Every service exports to the receiver, and traces nothing that came without a trace context.
    let telemetry = |service: &str| {
        let prefix = format!("RUNNEL_{}__TELEMETRY__", service.to_uppercase());
        vec![env(&format!("{prefix}OTLP_ENDPOINT"), &otlp), env(&format!("{prefix}SAMPLE_RATIO"), "0")]
    };
    let brokers = kafka().brokers;

    let (_store, _) = e2e::services::spawn_store_with(
        &dir,
        &topics,
        &unique("e2e-traces-store"),
        &dir.join("store"),
        "a",
        &telemetry("store").iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
    );
    let mut processor_env = vec![
        env("KAFKA_BROKERS", &brokers),
        env("RUNNEL_PROCESSOR__GROUP_ID", &unique("e2e-traces-processor")),
        env("RUNNEL_PROCESSOR__TRANSACTIONAL_ID", &unique("e2e-traces-processor")),
        env("RUNNEL_PROCESSOR__TOPICS__POINTS__NAME", &topics.points.name),
        env("RUNNEL_PROCESSOR__TOPICS__AGGREGATES__NAME", &topics.aggregates.name),
        env("RUNNEL_PROCESSOR__TOPICS__DEADLETTER__NAME", &topics.deadletter.name),
        env("RUNNEL_PROCESSOR__COMMIT_INTERVAL", "200ms"),
    ];
    processor_env.extend(telemetry("processor"));
    let mut processor = Service::spawn(&bin("processor"), &processor_env);
    let mut analyzer_env = vec![
        env("KAFKA_BROKERS", &brokers),
        env("RUNNEL_ANALYZER__GROUP_ID", &unique("e2e-traces-analyzer")),
        env("RUNNEL_ANALYZER__TRANSACTIONAL_ID", &unique("e2e-traces-analyzer")),
        env("RUNNEL_ANALYZER__GRPC__LISTEN", "127.0.0.1:0"),
        env("RUNNEL_ANALYZER__TOPICS__AGGREGATES__NAME", &topics.aggregates.name),
        env("RUNNEL_ANALYZER__TOPICS__ALERTS__NAME", &topics.alerts.name),
        env("RUNNEL_ANALYZER__TOPICS__CHANGELOG__NAME", &unique("e2e-traces-analyzer-changelog")),
        env("RUNNEL_ANALYZER__RULES_FILE", &rules.display().to_string()),
    ];
    analyzer_env.extend(telemetry("analyzer"));
    let mut analyzer = Service::spawn(&bin("analyzer"), &analyzer_env);
    let mut collector_env = vec![
        env("KAFKA_BROKERS", &brokers),
        env("RUNNEL_COLLECTOR__GRPC__LISTEN", "127.0.0.1:0"),
        env("RUNNEL_COLLECTOR__HTTP__LISTEN", "127.0.0.1:0"),
        env("RUNNEL_COLLECTOR__TOPICS__POINTS__NAME", &topics.points.name),
        env("RUNNEL_COLLECTOR__TOPICS__DEADLETTER__NAME", &topics.deadletter.name),
    ];
    collector_env.extend(telemetry("collector"));
    let mut collector = Service::spawn(&bin("collector"), &collector_env);
    let collector_addr = collector.logged_addr("grpc serving");
    processor.wait_for_log("ready=true", Duration::from_secs(60));
    analyzer.wait_for_log("ready=true", Duration::from_secs(60));

    // Ten points in the window [base, base + 10 s), hot enough to fire the rule, in one traced write.
    let base = (now_ns() / (60 * S) - 5) * 60 * S;
    let hot = series("traced", &[("host", "a")]);
    let points: Vec<_> = (0..10).map(|i| point(&hot, base + i * S, 100.0)).collect();
    let trace_id = format!("{:032x}", u128::from(std::process::id()) << 64 | u128::try_from(now_ns()).unwrap());
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let mut client = IngestServiceClient::connect(format!("http://{collector_addr}")).await.unwrap();
    let mut request = proto::tonic::Request::new(WriteRequest { points });
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    assert_eq!(client.write(request).await.unwrap().into_inner().accepted, 10);
    // Writes without a trace context, which a sampling ratio of 0 leaves unrecorded everywhere: another
    // series, and the hot series 30 s later, which moves the watermark past the traced window's end.
    let quiet = series("untraced", &[("host", "b")]);
    let mut untraced: Vec<_> = (0..10).map(|i| point(&quiet, base + i * S, 1.0)).collect();
    untraced.push(point(&hot, base + 30 * S, 100.0));
    assert_eq!(client.write(WriteRequest { points: untraced }).await.unwrap().into_inner().accepted, 11);

    // The chain, each span the parent of the next.
    let chain = [
        ("collector", "collector.write"),
        ("processor", "processor.window"),
        ("processor", "processor.emit"),
        ("analyzer", "analyzer.evaluate"),
        ("analyzer", "analyzer.alert"),
    ];
    let spans = eventually("every span of the trace", Duration::from_secs(90), || {
        let receiver = receiver.clone();
        let trace_id = trace_id.clone();
        async move {
            let spans = receiver.0.lock().unwrap().clone();
            let ours: Vec<Received> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
            let has = |service: &str, name: &str| ours.iter().any(|s| s.service == service && s.name == name);
            let stored = |kind: &str| ours.iter().any(|s| s.name == "store.ingest" && s.attributes.get("kind").map(String::as_str) == Some(kind));
            let complete = chain.iter().all(|(service, name)| has(service, name)) && stored("aggregates") && stored("alerts");
            complete.then_some(ours)
        }
    })
    .await;
    let one = |name: &str| {
        let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {found:#?}");
        found[0]
    };
    // The write's span is the child of the test's own span; every later span of the one before.
    assert_eq!(one("collector.write").parent_span_id, "00f067aa0ba902b7");
    for pair in chain.windows(2) {
        let (parent, child) = (one(pair[0].1), one(pair[1].1));
        assert_eq!(child.parent_span_id, parent.span_id, "{} follows {}", child.name, parent.name);
    }
    assert_eq!(one("processor.window").attributes["window_start_ns"], base.to_string());
    assert_eq!(one("analyzer.alert").attributes["state"], "ALERT_STATE_FIRING");
    let stored = |kind: &str| spans.iter().find(|s| s.name == "store.ingest" && s.attributes["kind"] == kind).unwrap();
    assert_eq!(stored("aggregates").parent_span_id, one("processor.emit").span_id);
    assert_eq!(stored("alerts").parent_span_id, one("analyzer.alert").span_id);
    // The store kept each traced point: ten `store.ingest` spans of kind points, children of the write.
    let points_kept: Vec<_> = spans.iter().filter(|s| s.name == "store.ingest" && s.attributes["kind"] == "points").collect();
    assert_eq!(points_kept.len(), 10, "{points_kept:#?}");
    assert!(points_kept.iter().all(|s| s.parent_span_id == one("collector.write").span_id));

    // Nothing of the untraced write, nor anything else, was exported: every span is of this trace.
    let all = receiver.0.lock().unwrap().clone();
    let strangers: Vec<_> = all.iter().filter(|s| s.trace_id != trace_id).collect();
    assert!(strangers.is_empty(), "spans of other traces: {strangers:#?}");
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["analyzer", "collector", "processor", "store"]);

    serving.abort();
    drop((collector, processor, analyzer));
    std::fs::remove_dir_all(&dir).unwrap();
}
