//! Roll-ups, compaction and retention running while queries run: two hours of old points (rolled up
//! into the 1-minute and 1-hour tiers, their raw windows then expired and deleted) and ten minutes of
//! recent ones flow through a real processor into a store that does its upkeep every 300 ms. A query
//! loop running all along never sees a step count more than its points (a duplicate) or fewer than it
//! saw before (a gap); at the end every tier's counts and percentiles match the raw values, and the raw
//! points past their own retention are gone while the recent ones are there once each.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::{LATENESS, S, Topics, WINDOW, exact_quantile, spread_value};
use e2e::services::{start_event_time_processor, store_settings};
use e2e::{Running, eventually, kafka, now_ns, produce_points, unique};
use proto::v1::query_service_client::QueryServiceClient;
use proto::v1::{Point, RangeRequest, SeriesSelector, Statistic};

const MINUTE: i64 = 60 * S;
const HOUR: i64 = 3600 * S;
const SERIES: u32 = 5;
const ACCURACY: f64 = 0.01;

fn point(series: u32, ts: i64, value: f64) -> Point {
    Point { metric: "latency".into(), tags: [("series".to_owned(), series.to_string())].into(), timestamp_ns: ts, value }
}

/// One point a second per series over `seconds` from `base`, in time order, valued by `spread_value`
/// of the second counted from `base`.
fn load(base: i64, seconds: i64) -> impl Iterator<Item = Point> {
    (0..seconds).flat_map(move |s| (0..SERIES).map(move |i| point(i, base + s * S, spread_value(i, s))))
}

type Client = QueryServiceClient<proto::tonic::transport::Channel>;

/// Each series' samples of `statistic` over `[start, end)` in steps of `step`, by series.
async fn samples(client: &mut Client, start: i64, end: i64, step: i64, statistic: Statistic, quantile: f64) -> BTreeMap<String, Vec<(i64, f64)>> {
    let request = RangeRequest {
        selector: Some(SeriesSelector { metric: "latency".into(), matchers: vec![] }),
        start_ns: start,
        end_ns: end,
        step_ns: step,
        statistic: statistic as i32,
        quantile,
    };
    let reply = client.range(request).await.unwrap().into_inner();
    reply.series.into_iter().map(|s| (s.series.unwrap().key(), s.samples.into_iter().map(|x| (x.start_ns, x.value)).collect())).collect()
}

/// The counts seen so far per (series, step): a later answer may only add to them, never exceed `full`.
#[derive(Default)]
struct Seen(BTreeMap<(String, i64), f64>);

impl Seen {
    fn check(&mut self, answer: &BTreeMap<String, Vec<(i64, f64)>>, full: f64, what: &str) {
        let mut now = BTreeMap::new();
        for (key, steps) in answer {
            for &(start, count) in steps {
                assert!(count <= full, "{what}: {key} at {start} counts {count} > {full}: a duplicate");
                now.insert((key.clone(), start), count);
            }
        }
        for (step, before) in &self.0 {
            let count = now.get(step).copied().unwrap_or(0.0);
            assert!(count >= *before, "{what}: {step:?} fell from {before} to {count}: a gap");
        }
        self.0 = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_compaction_and_retention_under_queries_lose_and_duplicate_nothing() {
    let topics = Topics::unique(2);
    kafka().ensure_topics(&[&topics.points, &topics.aggregates, &topics.deadletter]).await.unwrap();
    let path = std::env::temp_dir().join(unique("runnel-e2e-upkeep"));
    let now = now_ns();
    // Two whole hours ending four hours ago, and ten minutes ending twenty minutes ago.
    let old = (now - 6 * HOUR) / HOUR * HOUR;
    let recent = (now - 30 * MINUTE) / MINUTE * MINUTE;

    let processor = start_event_time_processor(&topics).await;
    let mut s = store_settings(&topics, &unique("e2e-upkeep-store"), &path);
    s.storage.flush_interval = Duration::from_millis(100);
    s.storage.maintenance_interval = Duration::from_millis(300);
    s.storage.compact_segments = 3;
    s.storage.delete_grace = Duration::from_millis(500);
    // The old load is past the raw retention, the recent one is not; the tiers keep everything.
    s.storage.retention.aggregates = Some(Duration::from_secs(3 * 3600));
    s.storage.retention.points = Some(Duration::from_secs(3 * 3600));
    for tier in &mut s.storage.tiers {
        tier.retention = None;
    }
    let app = store::App::build(s).await.unwrap();
    let (addr, upkeep): (SocketAddr, Arc<store::Upkeep>) = (app.grpc_addr(), app.upkeep(store::Kind::Aggregates));
    let points_upkeep = app.upkeep(store::Kind::Points);
    let store = Running::spawn(|shutdown| app.run(shutdown));
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();

    // The old load, then the recent one (whose points close the old windows), then one closing point per
    // series that closes the recent windows.
    let topic = topics.points.name.clone();
    let closing = recent + 10 * MINUTE + WINDOW + LATENESS;
    let producing = tokio::task::spawn_blocking(move || {
        let points = load(old, 2 * 3600).chain(load(recent, 600)).chain((0..SERIES).map(move |i| point(i, closing, 0.0)));
        produce_points(&kafka(), points, &topic, 12_000)
    });

    // Queries all along, until every kind of upkeep has happened and everything is there.
    let (mut minutes, mut hours, mut raw) = (Seen::default(), Seen::default(), Seen::default());
    let mut rounds = 0;
    let done = loop {
        rounds += 1;
        assert!(rounds < 3_000, "upkeep did not finish: {upkeep:?}");
        let by_minute = samples(&mut client, old, old + 2 * HOUR, MINUTE, Statistic::Count, 0.0).await;
        minutes.check(&by_minute, 60.0, "1-minute steps");
        let by_hour = samples(&mut client, old, old + 2 * HOUR, HOUR, Statistic::Count, 0.0).await;
        hours.check(&by_hour, 3600.0, "1-hour steps");
        let windows = samples(&mut client, recent, recent + 10 * MINUTE, 0, Statistic::Count, 0.0).await;
        raw.check(&windows, 10.0, "recent windows");
        let complete = minutes.0.len() == 120 * SERIES as usize
            && minutes.0.values().all(|c| *c == 60.0)
            && hours.0.values().all(|c| *c == 3600.0)
            && raw.0.len() == 60 * SERIES as usize
            && raw.0.values().all(|c| *c == 10.0);
        let upkept = [&upkeep.rollups, &upkeep.compactions, &upkeep.expired, &upkeep.deleted].iter().all(|c| c.load(Ordering::SeqCst) > 0);
        if complete && upkept && producing.is_finished() {
            break rounds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(producing.await.unwrap(), u64::from(SERIES) * (7200 + 600 + 1));
    eprintln!("{done} query rounds during upkeep: {upkeep:?}");

    // The raw windows of the old load's first hour are gone (past retention; a segment that also holds
    // recent windows stays, so the last old ones may too); its steps are answered by the tiers.
    let gone = samples(&mut client, old, old + HOUR, 0, Statistic::Count, 0.0).await;
    assert!(gone.is_empty(), "the old raw windows expired: {} series left", gone.len());
    let mut sql = client.clone();
    let tier_rows = eventually("the 1-minute tier to be listed whole", Duration::from_secs(30), || {
        let mut sql = sql.clone();
        async move {
            let rows = count_rows(&mut sql, &format!("SELECT * FROM aggregates_1m WHERE start_ns >= {old} AND start_ns < {}", old + 2 * HOUR)).await;
            (rows == 120 * SERIES as usize).then_some(rows)
        }
    })
    .await;
    assert_eq!(tier_rows, 120 * SERIES as usize, "one row per series and minute in SQL too");
    let hours_query = format!("SELECT * FROM aggregates_1h WHERE start_ns >= {old} AND start_ns < {}", old + 2 * HOUR);
    assert_eq!(count_rows(&mut sql, &hours_query).await, 2 * SERIES as usize, "two hours of each series");

    // The raw points have a retention of their own: the old load's go (all but those sharing a segment
    // with recent points, which can only be the last ones), the recent ones stay, each once, through
    // the compactions of their segments too.
    let first_hour = format!("SELECT * FROM points WHERE time_ns < {}", old + HOUR);
    eventually("the old points to expire", Duration::from_secs(60), || {
        let (mut sql, first_hour) = (sql.clone(), first_hour.clone());
        async move { (count_rows(&mut sql, &first_hour).await == 0).then_some(()) }
    })
    .await;
    let recent_points = count_rows(&mut sql, &format!("SELECT * FROM points WHERE time_ns >= {recent}")).await;
    assert_eq!(recent_points, SERIES as usize * 601, "every recent point (and closing point) once");
    assert!(points_upkeep.expired.load(Ordering::SeqCst) > 0 && points_upkeep.compactions.load(Ordering::SeqCst) > 0, "{points_upkeep:?}");

    // Percentiles at every tier against the raw values: 10-second windows (recent), 1 minute and 1 hour.
    for (start, span, step, tier) in [(recent, 10 * MINUTE, WINDOW, "raw"), (old, 2 * HOUR, MINUTE, "1m"), (old, 2 * HOUR, HOUR, "1h")] {
        for q in [0.5, 0.9, 0.99] {
            // A raw window's quantile is asked with step 0: the windows as stored.
            let ask = if tier == "raw" { 0 } else { step };
            let answer = samples(&mut client, start, start + span, ask, Statistic::Quantile, q).await;
            assert_eq!(answer.len(), SERIES as usize);
            for i in 0..SERIES {
                let steps = &answer[&format!("latency{{series=\"{i}\"}}")];
                assert_eq!(steps.len() as i64, span / step, "{tier}: series {i}");
                for &(at, estimate) in steps {
                    let first = (at - start) / S;
                    let values: Vec<f64> = (first..first + step / S).map(|s| spread_value(i, s)).collect();
                    let exact = exact_quantile(&values, q);
                    assert!((estimate - exact).abs() <= ACCURACY * exact, "{tier} series {i} at {at} q{q}: {estimate} vs exact {exact}");
                }
            }
        }
    }

    store.stop().await;
    processor.stop().await;
    let _ = std::fs::remove_dir_all(&path);
}

/// How many rows `query` answers.
async fn count_rows(client: &mut Client, query: &str) -> usize {
    store::client::sql(client, query).await.unwrap().iter().map(arrow::array::RecordBatch::num_rows).sum()
}
