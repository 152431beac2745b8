//! The store's queries against an oracle computed here from the raw values: points flow through a real
//! processor into a store, then `Range` with steps and statistics (percentiles from merged sketches
//! within the sketch's relative accuracy of the exact percentile), `Sql` group-bys, and every kind of
//! bad or oversized query, each answered with a clear status.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use arrow::array::{AsArray as _, RecordBatch};
use arrow::datatypes::{Int64Type, UInt64Type};
use e2e::oracle::{LATENESS, S, Topics, WINDOW, exact_quantile, spread_value as value};
use e2e::services::{start_event_time_processor, store_settings};
use e2e::{Running, eventually, kafka, now_ns, produce_points, unique};
use proto::tonic::Code;
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::tag_matcher::Op;
use proto::v1::{LatestRequest, Point, RangeRequest, SeriesSelector, Statistic, TagMatcher};

const MINUTE: i64 = 60 * S;
/// Minutes of data per series.
const MINUTES: i64 = 10;
const LATENCY_SERIES: u32 = 20;
const CPU_SERIES: u32 = 3;
/// The sketch's relative accuracy, the processor's default.
const ACCURACY: f64 = 0.01;

fn point(metric: &str, series: u32, ts: i64, value: f64) -> Point {
    Point { metric: metric.into(), tags: [("series".to_owned(), series.to_string())].into(), timestamp_ns: ts, value }
}

/// Every point in time order: one a second per series, then one closing point per series that closes
/// every data window.
fn points(base: i64) -> Vec<Point> {
    let mut points = Vec::new();
    for second in 0..MINUTES * 60 {
        for i in 0..LATENCY_SERIES {
            points.push(point("latency", i, base + second * S, value(i, second)));
        }
        for i in 0..CPU_SERIES {
            points.push(point("cpu", i, base + second * S, f64::from(i) + 0.5));
        }
    }
    let closing = base + MINUTES * MINUTE + WINDOW + LATENESS;
    (0..LATENCY_SERIES).for_each(|i| points.push(point("latency", i, closing, 0.0)));
    (0..CPU_SERIES).for_each(|i| points.push(point("cpu", i, closing, 0.0)));
    points
}

/// A store whose limits the bad-query checks reach: at most 10 series, 1,000 SQL rows, 3 s.
async fn start(topics: &Topics, path: &std::path::Path) -> (SocketAddr, Running<store::Error>) {
    let mut s = store_settings(topics, &unique("e2e-queries-store"), path);
    s.query.max_series = 10;
    s.query.max_rows = 1_000;
    s.query.timeout = Duration::from_secs(3);
    let app = store::App::build(s).await.unwrap();
    let addr = app.grpc_addr();
    (addr, Running::spawn(|shutdown| app.run(shutdown)))
}

fn selector(metric: &str, series: Option<u32>) -> Option<SeriesSelector> {
    let matchers = series.map(|i| TagMatcher { name: "series".into(), op: Op::Equal as i32, value: i.to_string() }).into_iter().collect();
    Some(SeriesSelector { metric: metric.into(), matchers })
}

/// The answer of `query` as record batches.
async fn sql(client: &mut QueryServiceClient<proto::tonic::transport::Channel>, query: &str) -> Result<Vec<RecordBatch>, proto::tonic::Status> {
    store::client::sql(client, query).await.map_err(|err| match err {
        store::client::ClientError::Status(status) => status,
        other => panic!("{query}: {other}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_statistics_and_sql_match_the_raw_values_and_bad_queries_are_named() {
    let topics = Topics::unique(2);
    kafka().ensure_topics(&[&topics.points, &topics.aggregates, &topics.deadletter]).await.unwrap();
    let path = std::env::temp_dir().join(unique("runnel-e2e-queries"));
    let base = (now_ns() - 3 * 3600 * S) / MINUTE * MINUTE;
    let processor = start_event_time_processor(&topics).await;
    let (addr, store) = start(&topics, &path).await;
    let all = points(base);
    let topic = topics.points.name.clone();
    let sent = tokio::task::spawn_blocking(move || produce_points(&kafka(), all.into_iter(), &topic, 50_000)).await.unwrap();
    assert_eq!(sent, (MINUTES * 60 + 1) as u64 * u64::from(LATENCY_SERIES + CPU_SERIES));

    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let last = base + MINUTES * MINUTE - WINDOW;
    eventually("the store to hold every series' last window", Duration::from_secs(90), || {
        let mut client = client.clone();
        async move {
            // One series at a time: all twenty are more than the limit of ten.
            for i in 0..LATENCY_SERIES {
                let latest = client.latest(LatestRequest { selector: selector("latency", Some(i)) }).await.ok()?.into_inner();
                (latest.series.len() == 1 && latest.series[0].windows[0].start_ns == last).then_some(())?;
            }
            Some(())
        }
    })
    .await;

    // Range in 1-minute steps: every statistic of every step of every series against the raw values.
    let range = |series: u32, statistic: Statistic, quantile: f64| RangeRequest {
        selector: selector("latency", Some(series)),
        start_ns: base,
        end_ns: base + MINUTES * MINUTE,
        step_ns: MINUTE,
        statistic: statistic as i32,
        quantile,
    };
    let mut checked = 0;
    for i in 0..LATENCY_SERIES {
        let raw: Vec<Vec<f64>> = (0..MINUTES).map(|m| (m * 60..(m + 1) * 60).map(|s| value(i, s)).collect()).collect();
        let mut answers = BTreeMap::new();
        for (statistic, q) in [
            (Statistic::Count, 0.0),
            (Statistic::Sum, 0.0),
            (Statistic::Min, 0.0),
            (Statistic::Max, 0.0),
            (Statistic::Stddev, 0.0),
            (Statistic::Quantile, 0.5),
            (Statistic::Quantile, 0.9),
            (Statistic::Quantile, 0.99),
        ] {
            let reply = client.range(range(i, statistic, q)).await.unwrap().into_inner();
            assert_eq!(reply.series.len(), 1);
            let samples = &reply.series[0].samples;
            assert!(reply.series[0].windows.is_empty(), "a statistic replaces the windows");
            assert_eq!(samples.iter().map(|s| s.start_ns).collect::<Vec<_>>(), (0..MINUTES).map(|m| base + m * MINUTE).collect::<Vec<_>>());
            answers.insert((statistic as i32, (q * 100.0) as i64), samples.iter().map(|s| s.value).collect::<Vec<f64>>());
        }
        for (m, values) in raw.iter().enumerate() {
            let n = values.len() as f64;
            let sum: f64 = values.iter().sum();
            let mean = sum / n;
            let stddev = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            let get = |statistic: Statistic, q: f64| answers[&(statistic as i32, (q * 100.0) as i64)][m];
            assert_eq!(get(Statistic::Count, 0.0), n, "series {i} minute {m}");
            assert!((get(Statistic::Sum, 0.0) - sum).abs() <= 1e-9 * sum, "series {i} minute {m}: sum");
            assert_eq!(get(Statistic::Min, 0.0), values.iter().copied().fold(f64::INFINITY, f64::min));
            assert_eq!(get(Statistic::Max, 0.0), values.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            assert!((get(Statistic::Stddev, 0.0) - stddev).abs() <= 1e-9 * stddev, "series {i} minute {m}: stddev");
            for q in [0.5, 0.9, 0.99] {
                let (estimate, exact) = (get(Statistic::Quantile, q), exact_quantile(values, q));
                assert!((estimate - exact).abs() <= ACCURACY * exact, "series {i} minute {m} q{q}: {estimate} vs exact {exact}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * MINUTES * i64::from(LATENCY_SERIES));

    // Sql: a group-by over the windows, against the points sent.
    let batches = sql(
        &mut client,
        &format!(
            "SELECT metric, count(*) AS windows, sum(\"count\") AS points FROM aggregates \
             WHERE start_ns >= {base} AND start_ns < {} GROUP BY metric ORDER BY metric",
            base + MINUTES * MINUTE
        ),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for batch in &batches {
        let (metric, windows, points) = (batch.column(0).as_string::<i32>(), batch.column(1).as_primitive::<Int64Type>(), batch.column(2).as_primitive::<UInt64Type>());
        for r in 0..batch.num_rows() {
            got.push((metric.value(r).to_owned(), windows.value(r), points.value(r)));
        }
    }
    let windows_per_series = MINUTES * MINUTE / WINDOW;
    assert_eq!(
        got,
        vec![
            ("cpu".to_owned(), windows_per_series * i64::from(CPU_SERIES), (MINUTES * 60) as u64 * u64::from(CPU_SERIES)),
            ("latency".to_owned(), windows_per_series * i64::from(LATENCY_SERIES), (MINUTES * 60) as u64 * u64::from(LATENCY_SERIES)),
        ]
    );
    // Map access to a tag, and an empty answer still carries its schema.
    let one = sql(&mut client, "SELECT tags['series'] AS s, max(max) AS m FROM aggregates WHERE metric = 'cpu' GROUP BY 1 ORDER BY 1").await.unwrap();
    let rows: usize = one.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, CPU_SERIES as usize);
    let none = sql(&mut client, "SELECT series FROM aggregates WHERE metric = 'absent'").await.unwrap();
    assert_eq!(none.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);

    // Bad queries: each a clear status naming the problem, and the store keeps answering.
    let status = |r: Result<Vec<RecordBatch>, proto::tonic::Status>| match r {
        Ok(batches) => panic!("answered with {} rows", batches.iter().map(RecordBatch::num_rows).sum::<usize>()),
        Err(status) => status,
    };
    let unknown = status(sql(&mut client, "SELECT nonsense FROM aggregates").await);
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("nonsense"), "{}", unknown.message());
    let syntax = status(sql(&mut client, "SELEC metric FROM aggregates").await);
    assert_eq!(syntax.code(), Code::InvalidArgument);
    assert!(syntax.message().starts_with("query: syntax error"), "{}", syntax.message());
    for refused in ["DROP TABLE aggregates", "CREATE TABLE t (a INT)", "INSERT INTO aggregates SELECT * FROM aggregates", "SET datafusion.execution.batch_size = 1"] {
        let refusal = sql(&mut client, refused).await;
        assert!(matches!(&refusal, Err(s) if s.code() == Code::InvalidArgument), "{refused}: {refusal:?}");
    }
    assert_eq!(status(sql(&mut client, "  ").await).message(), "query: must not be empty");
    let too_many = status(sql(&mut client, "SELECT * FROM aggregates").await);
    assert_eq!(too_many.code(), Code::ResourceExhausted, "{}", too_many.message());
    assert!(too_many.message().contains("1000"), "{}", too_many.message());
    let slow = status(sql(&mut client, "SELECT count(*) FROM aggregates a, aggregates b, aggregates c WHERE a.sum + b.sum + c.sum > 0").await);
    assert_eq!(slow.code(), Code::DeadlineExceeded, "{}", slow.message());
    let huge = status(sql(&mut client, &format!("SELECT 1 {}", " ".repeat(5 << 20))).await);
    assert!(matches!(huge.code(), Code::OutOfRange | Code::ResourceExhausted), "{huge:?}");

    let bad = |request: RangeRequest| {
        let mut client = client.clone();
        async move { client.range(request).await.unwrap_err() }
    };
    let ok = range(0, Statistic::Count, 0.0);
    let cases = [
        (RangeRequest { selector: None, ..ok.clone() }, Code::InvalidArgument, "selector.metric: must not be empty"),
        (RangeRequest { end_ns: ok.start_ns, ..ok.clone() }, Code::InvalidArgument, "end_ns:"),
        (RangeRequest { step_ns: -1, ..ok.clone() }, Code::InvalidArgument, "step_ns:"),
        (RangeRequest { statistic: 99, ..ok.clone() }, Code::InvalidArgument, "statistic: unknown statistic 99"),
        (RangeRequest { statistic: Statistic::Quantile as i32, quantile: 1.5, ..ok.clone() }, Code::InvalidArgument, "quantile:"),
        (RangeRequest { start_ns: 0, end_ns: i64::MAX, ..ok.clone() }, Code::InvalidArgument, "end_ns: the range is longer"),
        (
            RangeRequest { selector: Some(SeriesSelector { metric: "latency".into(), matchers: vec![TagMatcher { name: "series".into(), op: Op::Regex as i32, value: "(".into() }] }), ..ok.clone() },
            Code::InvalidArgument,
            "selector.matchers[0].value: invalid regex",
        ),
        (RangeRequest { selector: selector("latency", None), ..ok.clone() }, Code::ResourceExhausted, "the series selected would exceed the limit of 10"),
    ];
    for (request, code, message) in cases {
        let status = bad(request).await;
        assert_eq!((status.code(), status.message().starts_with(message)), (code, true), "{message}: {status:?}");
    }
    // An unknown series and an empty range are not errors: they have no windows.
    let unknown_series = client.range(RangeRequest { selector: selector("latency", Some(999)), ..ok.clone() }).await.unwrap().into_inner();
    assert!(unknown_series.series.is_empty());
    let empty = client.range(RangeRequest { start_ns: base - 600 * S, end_ns: base, ..ok.clone() }).await.unwrap().into_inner();
    assert!(empty.series.is_empty());
    assert_eq!(client.range(ok).await.unwrap().into_inner().series.len(), 1, "still answering");

    store.stop().await;
    processor.stop().await;
    let _ = std::fs::remove_dir_all(&path);
}
