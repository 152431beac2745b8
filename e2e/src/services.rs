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
use crate::{Running, kafka};

/// A store on `path` in consumer group `group`.
pub async fn start_store(
    topics: &Topics,
    group: &str,
    path: &Path,
) -> (SocketAddr, Arc<store::Stats>, Running<store::Error>) {
    let mut s = store::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.group_id = group.to_owned();
    s.topics.aggregates = topics.aggregates.clone();
    s.storage.path = path.to_path_buf();
    s.storage.flush_interval = Duration::from_millis(200);
    let app = store::App::build(s).await.expect("store starts");
    let (addr, stats) = (app.grpc_addr(), app.stats());
    (addr, stats, Running::spawn(|shutdown| app.run(shutdown)))
}

/// The settings of a processor in consumer group `group`, with the oracle's window and lateness.
pub fn processor_settings(topics: &Topics, group: &str) -> processor::Settings {
    let mut s = processor::Settings::default();
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


/// A collector writing to the test's points topic, with the default limits.
pub async fn start_collector(topics: &Topics) -> (SocketAddr, Running<collector::Error>) {
    let mut s = collector::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = topics.points.clone();
    let app = collector::App::build(s).await.expect("collector starts");
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
