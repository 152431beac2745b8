//! The whole pipeline on a real broker: points written to the collector come back from the store as
//! exactly the aggregates computed here independently, the analyzer's forecast slope and alerts match
//! an independent fit and rule simulation, the store keeps its rows across a restart, and a processor
//! that re-delivers every window adds no row.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::{Running, eventually, kafka, now_ns, topic, unique};
use futures::StreamExt as _;
use plumbing::kafka::TopicSettings;
use proto::v1::analyzer_service_client::AnalyzerServiceClient;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{
    AlertState, ForecastRequest, ListSeriesRequest, Point, RangeRequest, Series, SeriesSelector, WatchAlertsRequest,
    WindowStats, WriteRequest,
};

const S: i64 = 1_000_000_000;
const WINDOW: i64 = 10 * S;
const LATENESS: i64 = 5 * S;
const HOT: f64 = 28.0;

struct Topics {
    points: TopicSettings,
    aggregates: TopicSettings,
    alerts: TopicSettings,
}

fn series(metric: &str, tags: &[(&str, &str)]) -> Series {
    Series { metric: metric.into(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

fn point(s: &Series, ts: i64, value: f64) -> Point {
    Point { metric: s.metric.clone(), tags: s.tags.clone(), timestamp_ns: ts, value }
}

/// The test's data: three series, one point every 2 s from 0 to 48 s after `base`, sent in time order
/// across series except for points held back within the lateness, one point beyond it, and a point at
/// 60 s per series that moves every partition's watermark to 55 s, closing the windows up to 50 s.
struct Data {
    sent: Vec<Point>,
    late: Point,
}

fn data(base: i64, a: &Series, b: &Series, c: &Series) -> Data {
    let value_a = |t: i64| 20.0 + 0.2 * t as f64;
    let value_b = |t: i64| 30.0 - 0.1 * t as f64 + if t % 4 == 0 { 1.0 } else { 0.0 };
    let value_c = |t: i64| (t % 7) as f64;
    let mut sent = Vec::new();
    let mut held: Vec<Point> = Vec::new();
    for t in (0..50).step_by(2) {
        let ts = base + t * S;
        // Out of order within the lateness: a's points at 8 s and 26 s are sent 4 s later than their time.
        if t == 8 || t == 26 {
            held.push(point(a, ts, value_a(t)));
        } else {
            sent.push(point(a, ts, value_a(t)));
        }
        sent.push(point(b, ts, value_b(t)));
        sent.push(point(c, ts, value_c(t)));
        if t == 12 || t == 30 {
            sent.append(&mut held);
        }
    }
    // Beyond the lateness: b has reached 20 s, so its watermark is at least 15 s and the window [0, 10) of
    // every partition b can be in has closed.
    let late = point(b, base + 3 * S, 1000.0);
    let position = sent.iter().position(|p| p.metric == b.metric && p.tags == b.tags && p.timestamp_ns == base + 20 * S);
    sent.insert(position.expect("b at 20 s") + 1, late.clone());
    for s in [a, b, c] {
        sent.push(point(s, base + 60 * S, 0.0));
    }
    Data { sent, late }
}

/// The oracle: aggregates computed directly from the points, in send order, leaving out the late point and
/// windows that have not closed (start >= 50 s).
fn expected(base: i64, data: &Data) -> BTreeMap<String, Vec<WindowStats>> {
    let mut groups: BTreeMap<(String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for p in data.sent.iter().filter(|p| *p != &data.late) {
        let start = base + (p.timestamp_ns - base) / WINDOW * WINDOW;
        if start < base + 50 * S {
            groups.entry((p.series_key(), start)).or_default().push((p.timestamp_ns, p.value));
        }
    }
    let mut out: BTreeMap<String, Vec<WindowStats>> = BTreeMap::new();
    for ((key, start), points) in groups {
        let n = points.len() as f64;
        let sum = points.iter().fold(0.0, |acc, (_, v)| acc + v);
        // Textbook least squares, x in seconds since the window start.
        let xs: Vec<f64> = points.iter().map(|(t, _)| (t - start) as f64 / 1e9).collect();
        let (mx, my) = (xs.iter().sum::<f64>() / n, sum / n);
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let sxy: f64 = xs.iter().zip(&points).map(|(x, (_, v))| (x - mx) * (v - my)).sum();
        out.entry(key).or_default().push(WindowStats {
            start_ns: start,
            end_ns: start + WINDOW,
            count: points.len() as u64,
            sum,
            mean: sum / n,
            min: points.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min),
            max: points.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max),
            gradient_per_second: (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx),
        });
    }
    out
}

fn assert_windows(key: &str, got: &[WindowStats], want: &[WindowStats]) {
    assert_eq!(got.len(), want.len(), "{key}: window count");
    for (g, w) in got.iter().zip(want) {
        let ctx = format!("{key} window at {}", w.start_ns);
        assert_eq!((g.start_ns, g.end_ns, g.count), (w.start_ns, w.end_ns, w.count), "{ctx}");
        assert_eq!((g.sum, g.mean, g.min, g.max), (w.sum, w.mean, w.min, w.max), "{ctx}");
        match (g.gradient_per_second, w.gradient_per_second) {
            // Different algorithms (streaming co-moments versus two passes) agree to rounding only.
            (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{ctx}: gradient {g} vs {w}"),
            (g, w) => assert_eq!(g, w, "{ctx}: gradient"),
        }
    }
}

async fn start_store(
    topics: &Topics,
    group: &str,
    path: &PathBuf,
) -> (SocketAddr, Arc<store::Stats>, Running<store::Error>) {
    let mut s = store::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.group_id = group.to_owned();
    s.topics.aggregates = topics.aggregates.clone();
    s.storage.path = path.clone();
    let app = store::App::build(s).await.expect("store starts");
    let (addr, stats) = (app.grpc_addr(), app.stats());
    (addr, stats, Running::spawn(|shutdown| app.run(shutdown)))
}

async fn start_processor(topics: &Topics, group: &str) -> (Arc<processor::Stats>, Running<processor::Error>) {
    let mut s = processor::Settings::default();
    s.kafka = kafka();
    s.group_id = group.to_owned();
    s.topics.points = topics.points.clone();
    s.topics.aggregates = topics.aggregates.clone();
    s.windows.size = Duration::from_nanos(WINDOW as u64);
    s.windows.allowed_lateness = Duration::from_nanos(LATENESS as u64);
    s.commit_interval = Duration::from_millis(200);
    let app = processor::App::build(s).await.expect("processor starts");
    let stats = app.stats();
    (stats, Running::spawn(|shutdown| app.run(shutdown)))
}

async fn range(addr: SocketAddr, metric: &str, base: i64) -> BTreeMap<String, Vec<WindowStats>> {
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let request = RangeRequest {
        selector: Some(SeriesSelector { metric: metric.into(), matchers: vec![] }),
        start_ns: base - 3600 * S,
        end_ns: base + 3600 * S,
    };
    let reply = client.range(request).await.unwrap().into_inner();
    reply.series.into_iter().map(|s| (s.series.unwrap().key(), s.windows)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_become_exact_aggregates_forecasts_and_alerts() {
    let topics = Topics {
        points: topic("e2e-points", 3),
        aggregates: topic("e2e-aggregates", 3),
        alerts: topic("e2e-alerts", 1),
    };
    let store_group = unique("e2e-store");
    let store_path = std::env::temp_dir().join(unique("runnel-e2e-store"));

    // Collector.
    let mut cs = collector::Settings::default();
    cs.kafka = kafka();
    cs.grpc.listen = "127.0.0.1:0".parse().unwrap();
    cs.topics.points = topics.points.clone();
    let collector_app = collector::App::build(cs).await.expect("collector starts");
    let collector_addr = collector_app.grpc_addr();
    let collector = Running::spawn(|shutdown| collector_app.run(shutdown));

    // Processor, store, analyzer.
    let (processor_stats, processor) = start_processor(&topics, &unique("e2e-processor")).await;
    let (store_addr, _, store) = start_store(&topics, &store_group, &store_path).await;
    let mut als = analyzer::Settings::default();
    als.kafka = kafka();
    als.grpc.listen = "127.0.0.1:0".parse().unwrap();
    als.group_id = unique("e2e-analyzer");
    als.topics.aggregates = topics.aggregates.clone();
    als.topics.alerts = topics.alerts.clone();
    als.model.windows = 10;
    als.rules = vec![analyzer::rules::Rule {
        name: "hot".into(),
        metric: "temp".into(),
        op: analyzer::rules::Comparison::Above,
        threshold: HOT,
    }];
    let analyzer_app = analyzer::App::build(als).await.expect("analyzer starts");
    let analyzer_addr = analyzer_app.grpc_addr();
    let analyzer = Running::spawn(|shutdown| analyzer_app.run(shutdown));

    let mut analyzer_client = AnalyzerServiceClient::connect(format!("http://{analyzer_addr}")).await.unwrap();
    let mut watch = analyzer_client.watch_alerts(WatchAlertsRequest {}).await.unwrap().into_inner();

    // Write: an hour ago, aligned to the window size.
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let (a, b, c) = (
        series("temp", &[("host", "a")]),
        series("temp", &[("host", "b")]),
        series("load", &[("host", "a"), ("dc", "x")]),
    );
    let data = data(base, &a, &b, &c);
    let mut ingest = IngestServiceClient::connect(format!("http://{collector_addr}")).await.unwrap();
    for chunk in data.sent.chunks(20) {
        let reply = ingest.write(WriteRequest { points: chunk.to_vec() }).await.unwrap().into_inner();
        assert_eq!(reply.accepted, chunk.len() as u64);
    }

    // Exact aggregates through QueryService.Range.
    let want = expected(base, &data);
    let want_temp: BTreeMap<_, _> = want.iter().filter(|(k, _)| k.starts_with("temp{")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(want_temp.len(), 2);
    assert!(want_temp.values().all(|w| w.len() == 5), "five closed windows per series");
    let got = eventually("the store to hold every closed window", Duration::from_secs(60), || async {
        let got = range(store_addr, "temp", base).await;
        (got.values().map(Vec::len).sum::<usize>() >= 10).then_some(got)
    })
    .await;
    assert_eq!(got.keys().collect::<Vec<_>>(), want_temp.keys().collect::<Vec<_>>());
    for (key, windows) in &want_temp {
        assert_windows(key, &got[key], windows);
    }
    let load = range(store_addr, "load", base).await;
    assert_windows(&c.key(), &load[&c.key()], &want[&c.key()]);
    assert_eq!(processor_stats.late_points.load(Ordering::SeqCst), 1, "exactly the one point beyond the lateness");

    // ListSeries answers from what is stored.
    let mut query = QueryServiceClient::connect(format!("http://{store_addr}")).await.unwrap();
    let listed = query.list_series(ListSeriesRequest { selector: None }).await.unwrap().into_inner().series;
    let listed: BTreeSet<String> = listed.iter().map(Series::key).collect();
    assert_eq!(listed, BTreeSet::from([a.key(), b.key(), c.key()]));

    // The forecast slope equals an independent least-squares fit of a's window means at their midpoints.
    let means: Vec<(f64, f64)> = want[&a.key()]
        .iter()
        .map(|w| (((w.start_ns + w.end_ns) / 2 - base) as f64 / 1e9, w.mean))
        .collect();
    let n = means.len() as f64;
    let (mx, my) = (means.iter().map(|m| m.0).sum::<f64>() / n, means.iter().map(|m| m.1).sum::<f64>() / n);
    let slope = means.iter().map(|(x, y)| (x - mx) * (y - my)).sum::<f64>() / means.iter().map(|(x, _)| (x - mx).powi(2)).sum::<f64>();
    assert!((slope - 0.2).abs() < 1e-9, "a rises 0.2 per second: {slope}");
    let horizon = 30 * S;
    let forecast = eventually("the analyzer to fit five windows", Duration::from_secs(30), || {
        let mut client = analyzer_client.clone();
        let a = a.clone();
        async move {
            let reply = client.forecast(ForecastRequest { series: Some(a), horizon_ns: horizon }).await.ok()?.into_inner();
            (reply.windows == 5).then_some(reply)
        }
    })
    .await;
    assert!((forecast.slope_per_second - slope).abs() < 1e-9, "{} vs {slope}", forecast.slope_per_second);
    let at = base + 50 * S + horizon;
    assert_eq!(forecast.at_ns, at);
    let predicted = my + slope * ((at - base) as f64 / 1e9 - mx);
    assert!((forecast.value - predicted).abs() < 1e-9, "{} vs {predicted}", forecast.value);

    // Alerts: the rule simulated on the oracle's windows, per series in window order.
    let mut want_alerts = BTreeSet::new();
    for s in [&a, &b] {
        let mut firing = false;
        for (i, w) in want[&s.key()].iter().enumerate() {
            let hot = w.mean > HOT;
            if (i == 0 && hot) || (i > 0 && hot != firing) {
                let state = if hot { AlertState::Firing } else { AlertState::Resolved };
                want_alerts.insert((format!("hot/{}", s.key()), w.start_ns, state as i32));
            }
            firing = hot;
        }
    }
    assert!(want_alerts.len() >= 2, "the data must make the rule fire: {want_alerts:?}");
    let mut got_alerts = BTreeSet::new();
    while got_alerts.len() < want_alerts.len() {
        let alert = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an alert within 30 s")
            .expect("the watch stream is open")
            .expect("an alert, not an error");
        got_alerts.insert((alert.id, alert.window_start_ns, alert.state));
    }
    assert_eq!(got_alerts, want_alerts);
    assert_eq!(e2e::message_count(&kafka(), &topics.alerts.name), want_alerts.len() as i64, "one message per change");

    // Durability: the same aggregates after the store stops and starts again.
    store.stop().await;
    let (store_addr, restarted_stats, store) = start_store(&topics, &store_group, &store_path).await;
    let again = range(store_addr, "temp", base).await;
    assert_eq!(again, got, "the restarted store answers the same");

    // Idempotence: a second processor group re-reads every point and emits every window again; the store
    // replaces rows instead of adding any.
    let (replay_stats, replay) = start_processor(&topics, &unique("e2e-replay")).await;
    let emitted_once = processor_stats.windows_emitted.load(Ordering::SeqCst);
    eventually("the replaying processor to emit every window again", Duration::from_secs(60), || {
        let emitted = replay_stats.windows_emitted.load(Ordering::SeqCst);
        async move { (emitted >= emitted_once).then_some(()) }
    })
    .await;
    eventually("the store to see the re-delivered windows", Duration::from_secs(60), || {
        let replaced = restarted_stats.replaced.load(Ordering::SeqCst);
        async move { (replaced >= emitted_once).then_some(()) }
    })
    .await;
    assert_eq!(restarted_stats.inserted.load(Ordering::SeqCst), 0, "a re-delivered window adds no row");
    assert_eq!(range(store_addr, "temp", base).await, got);

    collector.stop().await;
    replay.stop().await;
    processor.stop().await;
    store.stop().await;
    analyzer.stop().await;
    let _ = std::fs::remove_dir_all(&store_path);
}
