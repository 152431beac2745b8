//! Services started in-process on OS-assigned ports, wired to one test's topics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{Point, RangeRequest, SeriesSelector, WindowStats, WriteRequest};

use crate::oracle::{LATENESS, S, Topics, WINDOW};
use crate::verify::{FormulaData, Observed, Reading};
use crate::{Running, kafka};

/// The settings of a store on `path` in consumer group `group`, flushing every 200 ms.
pub fn store_settings(topics: &Topics, group: &str, path: &Path) -> store::Settings {
    let mut s = store::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.group_id = group.to_owned();
    s.topics.points = topics.points.clone();
    s.topics.aggregates = topics.aggregates.clone();
    s.topics.alerts = topics.alerts.clone();
    s.storage.path = path.to_path_buf();
    s.storage.flush_interval = Duration::from_millis(200);
    s
}

/// A store on `path` in consumer group `group`.
pub async fn start_store(
    topics: &Topics,
    group: &str,
    path: &Path,
) -> (SocketAddr, Arc<store::Stats>, Running<store::Error>) {
    let app = store::App::build(store_settings(topics, group, path)).await.expect("store starts");
    let (addr, stats) = (app.grpc_addr(), app.stats(store::Kind::Aggregates));
    (addr, stats, Running::spawn(|shutdown| app.run(shutdown)))
}

/// The settings of a processor in consumer group `group`, with the oracle's window and lateness.
pub fn processor_settings(topics: &Topics, group: &str) -> processor::Settings {
    let mut s = processor::Settings::default();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.kafka = kafka();
    s.group_id = group.to_owned();
    s.transactional_id = crate::unique("e2e-processor");
    s.topics.points = topics.points.clone();
    s.topics.aggregates = topics.aggregates.clone();
    s.topics.deadletter = topics.deadletter.clone();
    s.windows.default = processor::WindowDef::Tumbling { size: Duration::from_nanos(WINDOW as u64) };
    s.windows.allowed_lateness = Duration::from_nanos(LATENESS as u64);
    s.commit_interval = Duration::from_millis(200);
    s
}

/// A processor in consumer group `group`, with the oracle's window and lateness.
pub async fn start_processor(topics: &Topics, group: &str) -> (Arc<processor::Stats>, Running<processor::Error>) {
    let app = processor::App::build(processor_settings(topics, group)).await.expect("processor starts");
    let stats = app.stats();
    (stats, Running::spawn(|shutdown| app.run(shutdown)))
}

/// A processor whose windows only event time closes (an idle timeout of an hour), for loads that lie in
/// the past and may pause.
pub async fn start_event_time_processor(topics: &Topics) -> Running<processor::Error> {
    let mut settings = processor_settings(topics, &crate::unique("e2e-processor"));
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.expect("processor starts");
    Running::spawn(|shutdown| app.run(shutdown))
}

/// `Range` of every `load` series (`FormulaData`'s) over `[start_ns, end_ns)`, as a reading to compare
/// with an oracle.
pub async fn range_reading(addr: SocketAddr, start_ns: i64, end_ns: i64) -> Reading {
    // A thousand series' windows with their sketches are more than tonic's default 4 MiB.
    let client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut client = client.max_decoding_message_size(64 << 20);
    let request = RangeRequest {
        selector: Some(SeriesSelector { metric: "load".into(), matchers: vec![] }),
        start_ns,
        end_ns,
        ..RangeRequest::default()
    };
    let reply = client.range(request).await.unwrap().into_inner();
    let mut reading = Reading::default();
    for series in reply.series {
        let key = series.series.unwrap().key();
        for (i, w) in series.windows.into_iter().enumerate() {
            reading.aggregates.push(Observed { key: (key.clone(), w.start_ns), stats: w, partition: 0, offset: i as i64 });
        }
    }
    reading
}

/// The windows of `data`, queried over its own span.
pub async fn range_of(addr: SocketAddr, data: &FormulaData) -> Reading {
    range_reading(addr, data.base, data.base + i64::from(data.seconds) * S).await
}

/// The windows of every series of `metric` within an hour of `base`, by series key.
pub async fn range(addr: SocketAddr, metric: &str, base: i64) -> BTreeMap<String, Vec<WindowStats>> {
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let request = RangeRequest {
        selector: Some(SeriesSelector { metric: metric.into(), matchers: vec![] }),
        start_ns: base - 3600 * S,
        end_ns: base + 3600 * S,
        ..RangeRequest::default()
    };
    let reply = client.range(request).await.unwrap().into_inner();
    reply.series.into_iter().map(|s| (s.series.unwrap().key(), s.windows)).collect()
}


/// The settings of a collector writing to the test's points topic, every listener on loopback port 0,
/// with the default limits.
pub fn collector_settings(topics: &Topics) -> collector::Settings {
    let mut s = collector::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = topics.points.clone();
    s
}

/// A collector writing to the test's points topic, with the default limits.
pub async fn start_collector(topics: &Topics) -> (SocketAddr, Running<collector::Error>) {
    let app = collector::App::build(collector_settings(topics)).await.expect("collector starts");
    let addr = app.grpc_addr();
    (addr, Running::spawn(|shutdown| app.run(shutdown)))
}

/// Writes `points` through the collector in batches of 20, in order, asserting each is accepted whole.
pub async fn write(collector: SocketAddr, points: &[Point]) {
    let mut client = IngestServiceClient::connect(format!("http://{collector}")).await.unwrap();
    for chunk in points.chunks(20) {
        let reply = client.write(WriteRequest { points: chunk.to_vec() }).await.unwrap().into_inner();
        assert_eq!(reply.accepted, chunk.len() as u64);
    }
}

/// A store process in group `group` on the object store folder `path`, flushing every 200 ms, with a
/// short session (the group notices a killed instance in seconds) and the static group membership
/// `instance` (a restarted instance takes its place at once instead of waiting out the session). Its
/// settings file goes to `dir`. Returns it with its gRPC address.
pub fn spawn_store(dir: &Path, topics: &Topics, group: &str, path: &Path, instance: &str) -> (crate::process::Service, SocketAddr) {
    spawn_store_with(dir, topics, group, path, instance, &[])
}

/// [`spawn_store`] with more environment variables (e.g. `FAILPOINTS`).
pub fn spawn_store_with(
    dir: &Path,
    topics: &Topics,
    group: &str,
    path: &Path,
    instance: &str,
    more: &[(&str, &str)],
) -> (crate::process::Service, SocketAddr) {
    let config = dir.join(format!("store-{instance}.toml"));
    let settings = format!(
        "[kafka.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\"group.instance.id\" = \"{group}-{instance}\"\n"
    );
    std::fs::write(&config, settings).expect("store settings file");
    let env = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut vars = vec![
        env("KAFKA_BROKERS", &kafka().brokers),
        env("RUNNEL_STORE__GROUP_ID", group),
        env("RUNNEL_STORE__TOPICS__POINTS__NAME", &topics.points.name),
        env("RUNNEL_STORE__TOPICS__AGGREGATES__NAME", &topics.aggregates.name),
        env("RUNNEL_STORE__TOPICS__ALERTS__NAME", &topics.alerts.name),
        env("RUNNEL_STORE__STORAGE__PATH", &path.display().to_string()),
        env("RUNNEL_STORE__STORAGE__FLUSH_INTERVAL", "200ms"),
        env("RUNNEL_STORE__GRPC__LISTEN", "127.0.0.1:0"),
    ];
    vars.extend(more.iter().map(|(k, v)| env(k, v)));
    let mut service =
        crate::process::Service::spawn_with_args(&crate::process::bin("store"), &["--config", &config.display().to_string()], &vars);
    let addr = service.logged_addr("grpc serving");
    (service, addr)
}
