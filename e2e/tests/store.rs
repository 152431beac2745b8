//! The store as real processes on a real broker: SIGKILLed every few seconds while 200,000 points and
//! their aggregates flow, it still lists every window exactly once in a gapless chain of segments, and
//! leaves no segment behind unlisted; two instances sharing one object store answer alike, and when one
//! is killed the other takes its partitions over with nothing lost.
//!
//! The oracle is `FormulaData`: every window's statistics by formula, independent of any service.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::oracle::{LATENESS, S, Topics, WINDOW};
use e2e::process::Service;
use e2e::services::{range_of, spawn_store, spawn_store_with, start_event_time_processor};
use e2e::stored::{StoredPoint, stored};
use e2e::verify::{Expected, FormulaData, Options, compare};
use e2e::{Running, eventually, kafka, now_ns, produce_points, unique};
use proto::v1::query_service_client::QueryServiceClient;
use proto::prost::Message as _;
use proto::v1::{LatestRequest, ListSeriesRequest, SeriesSelector, WindowStats};
use store::Kind;

/// These tests load both cores; one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's topics, folder and processor.
struct Run {
    topics: Topics,
    dir: std::path::PathBuf,
    group: String,
    processor: Option<Running<processor::Error>>,
}

impl Run {
    async fn new() -> Self {
        let topics = Topics::unique(4);
        kafka().ensure_topics(&[&topics.points, &topics.aggregates, &topics.alerts, &topics.deadletter]).await.unwrap();
        let dir = std::env::temp_dir().join(unique("runnel-store-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        // Only event time closes windows: the loads lie in the past and may pause between phases.
        let processor = Some(start_event_time_processor(&topics).await);
        Self { topics, group: unique("e2e-store"), dir, processor }
    }

    fn objects(&self) -> std::path::PathBuf {
        self.dir.join("objects")
    }

    fn spawn_store(&self, instance: &str) -> (Service, SocketAddr) {
        spawn_store(&self.dir, &self.topics, &self.group, &self.objects(), instance)
    }

    /// A store that pauses 300 ms between writing each segment and listing it, so that a kill lands
    /// there more often than not.
    fn spawn_slow_store(&self, instance: &str) -> Service {
        // No compaction or expiry either: every segment object not listed is then one a kill left.
        let failpoint = [
            ("FAILPOINTS", "store::before_publish=return(300)"),
            ("RUNNEL_STORE__STORAGE__COMPACT_SEGMENTS", "1000000"),
        ];
        spawn_store_with(&self.dir, &self.topics, &self.group, &self.objects(), instance, &failpoint).0
    }

    fn produce(&self, data: FormulaData, rate: u64) -> tokio::task::JoinHandle<u64> {
        let topic = self.topics.points.name.clone();
        tokio::task::spawn_blocking(move || produce_points(&kafka(), data.points(), &topic, rate))
    }

    async fn stop(mut self) {
        if let Some(processor) = self.processor.take() {
            processor.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_sigkilled_during_flushes_lists_every_window_exactly_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let run = Run::new().await;
    let base = (now_ns() - 3 * 3600 * S) / WINDOW * WINDOW;
    let data = FormulaData::new(base, 1_000, 200, 11);
    let mut store = run.spawn_slow_store("a");
    let mut logs = vec![store.log_path().to_owned()];
    let producing = run.produce(data, 6_000);

    // SIGKILL every 2 to 3.5 s (varied, so that kills land at every phase of the flushes) while the load
    // flows, and a few times after it while the last windows arrive.
    let mut kills = 0;
    let mut after = 0;
    while after < 3 {
        tokio::time::sleep(Duration::from_millis(2_000 + 500 * (kills % 4))).await;
        assert!(!store.kill().success(), "the store was running when killed:\n{}", store.log_tail(30));
        kills += 1;
        store = run.spawn_slow_store("a");
        logs.push(store.log_path().to_owned());
        if producing.is_finished() {
            after += 1;
        }
        assert!(kills < 60, "the load took far longer than planned");
    }
    let sent = producing.await.unwrap();
    let addr = {
        let (last, addr) = run.spawn_store("a");
        drop(std::mem::replace(&mut store, last));
        addr
    };

    let expected = data.expected();
    let deadline = Instant::now() + Duration::from_secs(180);
    let got = loop {
        let got = stored(&run.objects(), Kind::Aggregates, &run.topics.aggregates.name, 4).await;
        if got.reading.aggregates.len() >= expected.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let verdict = compare(&got.reading, &expected, Options::default());
    assert!(verdict.is_clean(), "{sent} points, {kills} SIGKILLs:\n{verdict}\nstore log:\n{}", store.log_tail(40));
    assert!(got.gaps.is_empty(), "the segments of a partition follow each other: {:?}", got.gaps);
    let unlisted: Vec<&String> = got.objects.difference(&got.listed).collect();
    assert!(unlisted.is_empty(), "a replay rewrites the segment a kill left unlisted, never a second copy: {unlisted:?}");
    let counted: u64 = got.reading.aggregates.iter().map(|o| o.stats.count).sum();
    assert_eq!(counted, sent - u64::from(data.series), "every data point is counted once (the closing points' windows stay open)");
    // The kills did land between writing a segment and listing it: a restart found the segment.
    let rewrites = logs
        .iter()
        .map(|log| std::fs::read_to_string(log).unwrap_or_default())
        .map(|text| text.lines().filter(|l| l.contains("partition taken over") && l.contains("cut_at=Some")).count())
        .sum::<usize>();
    assert!(rewrites >= 1, "no kill fell between a segment's write and its listing in {kills} kills");
    let answered = range_of(addr, &data).await;
    assert!(compare(&answered, &expected, Options::default()).is_clean(), "the restarted store answers every window once");

    // The raw points too: exactly the records of the points topic, each once.
    let topic = run.topics.points.name.clone();
    let mut want: Vec<StoredPoint> = tokio::task::spawn_blocking(move || e2e::read_committed(&kafka(), &topic, sent as usize, Duration::from_secs(60)))
        .await
        .unwrap()
        .into_iter()
        .map(|record| {
            let point = proto::v1::Point::decode(record.payload.as_slice()).unwrap();
            StoredPoint { partition: record.partition, offset: record.offset, series: point.series_key(), time_ns: point.timestamp_ns, value: point.value }
        })
        .collect();
    assert_eq!(want.len() as u64, sent, "the oracle read the whole points topic");
    let mut points = eventually("every point to be durable", Duration::from_secs(60), || async {
        let got = stored(&run.objects(), Kind::Points, &run.topics.points.name, 4).await;
        (got.points.len() >= want.len()).then_some(got)
    })
    .await;
    assert!(points.gaps.is_empty(), "the points' segments follow each other: {:?}", points.gaps);
    let unlisted: Vec<&String> = points.objects.difference(&points.listed).collect();
    assert!(unlisted.is_empty(), "no second copy of a points segment: {unlisted:?}");
    let order = |p: &StoredPoint| (p.partition, p.offset);
    want.sort_by_key(order);
    points.points.sort_by_key(order);
    assert!(points.points == want, "the points table holds each record of the topic once ({} rows for {} records)", points.points.len(), want.len());
    eprintln!(
        "{sent} points, {kills} SIGKILLs ({rewrites} between a segment's write and its listing): {} windows listed once each in {} segments",
        expected.len(),
        got.listed.len()
    );
    drop(store);
    run.stop().await;
}

/// The record batches of a `Sql` answer.
async fn sql_batches(addr: SocketAddr, query: &str) -> Vec<arrow::array::RecordBatch> {
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    store::client::sql(&mut client, query).await.unwrap()
}

/// The rows of a `series, windows, points, top` SQL answer.
async fn sql(addr: SocketAddr, query: &str) -> Vec<(String, i64, u64, f64)> {
    use arrow::array::AsArray as _;
    use arrow::datatypes::{Float64Type, Int64Type, UInt64Type};

    let mut rows = Vec::new();
    for batch in sql_batches(addr, query).await {
        let (series, windows) = (batch.column(0).as_string::<i32>(), batch.column(1).as_primitive::<Int64Type>());
        let (points, top) = (batch.column(2).as_primitive::<UInt64Type>(), batch.column(3).as_primitive::<Float64Type>());
        for r in 0..batch.num_rows() {
            rows.push((series.value(r).to_owned(), windows.value(r), points.value(r), top.value(r)));
        }
    }
    rows
}

/// Every row of a `Sql` answer, each value as Arrow displays it.
async fn rows(addr: SocketAddr, query: &str) -> Vec<Vec<String>> {
    use arrow::util::display::array_value_to_string;

    let mut rows = Vec::new();
    for batch in sql_batches(addr, query).await {
        for r in 0..batch.num_rows() {
            rows.push(batch.columns().iter().map(|c| array_value_to_string(c, r).unwrap()).collect());
        }
    }
    rows
}

/// `value` as `rows` shows a float.
fn float(value: f64) -> String {
    arrow::util::display::array_value_to_string(&arrow::array::Float64Array::from(vec![value]), 0).unwrap()
}

/// Sends `n` alert state changes (firing, then resolved for every third) to `topic`; returns the rows
/// the alerts table should hold for them, as `rows` reads `id, rule, series, state, value, threshold,
/// window_end_ns`, in that order.
async fn produce_alerts(topic: &str, n: u32) -> Vec<Vec<String>> {
    use proto::v1::{Alert, AlertState};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mut alerts = Vec::new();
    for i in 0..n {
        let series = e2e::oracle::series("load", &[("i", &i.to_string())]);
        let id = format!("hot/{}", series.key());
        for (state, end) in [(AlertState::Firing, 10 * S)].into_iter().chain((i % 3 == 0).then_some((AlertState::Resolved, 20 * S))) {
            let value = f64::from(i) + 0.5;
            let alert = Alert {
                id: id.clone(),
                rule: "hot".into(),
                series: Some(series.clone()),
                state: state as i32,
                value,
                threshold: 7.25,
                window_start_ns: end - 10 * S,
                window_end_ns: end,
                since_ns: end - 10 * S,
            };
            alerts.push(alert);
        }
    }
    let producer: FutureProducer = kafka().producer("e2e-alerts").create().unwrap();
    for alert in &alerts {
        let payload = alert.encode_to_vec();
        let sent = producer.send(FutureRecord::to(topic).key(&alert.id).payload(&payload), Duration::from_secs(10)).await;
        sent.map_err(|(err, _)| err).unwrap();
    }
    let mut rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let state = if a.state == AlertState::Firing as i32 { "firing" } else { "resolved" };
            let series = a.series.as_ref().unwrap().key();
            vec![a.id.clone(), a.rule.clone(), series, state.into(), float(a.value), float(a.threshold), a.window_end_ns.to_string()]
        })
        .collect();
    rows.sort_by(|x, y| (&x[0], x[6].parse::<i64>().unwrap()).cmp(&(&y[0], y[6].parse::<i64>().unwrap())));
    rows
}

/// Every series' latest window, by key.
async fn latest(addr: SocketAddr) -> BTreeMap<String, WindowStats> {
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let request = LatestRequest { selector: Some(SeriesSelector { metric: "load".into(), matchers: vec![] }) };
    let reply = client.latest(request).await.unwrap().into_inner();
    reply.series.into_iter().map(|s| (s.series.unwrap().key(), s.windows.into_iter().next().unwrap())).collect()
}

/// Every series key, read page by page.
async fn list(addr: SocketAddr, page_size: u32) -> Vec<String> {
    let mut client = QueryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let mut keys = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1_000 {
        let page = client.list_series(ListSeriesRequest { selector: None, page_size, page_token }).await.unwrap().into_inner();
        assert!(page.series.len() <= page_size as usize);
        keys.extend(page.series.iter().map(proto::v1::Series::key));
        if page.next_page_token.is_empty() {
            return keys;
        }
        page_token = page.next_page_token;
    }
    panic!("more than 1,000 pages")
}

/// The window each series' closing point opens, once later points close it: one point of value 0.
fn closing_windows(data: &FormulaData) -> Expected {
    let start = data.base + (i64::from(data.seconds) + WINDOW / S - 1) / (WINDOW / S) * WINDOW + WINDOW;
    assert_eq!((start + LATENESS) / WINDOW * WINDOW, start, "the closing point lies in this window");
    (0..data.series)
        .map(|i| {
            let stats = WindowStats { start_ns: start, end_ns: start + WINDOW, count: 1, ..WindowStats::default() };
            ((FormulaData::key(i), start), stats)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_answer_alike_and_one_takes_over_when_the_other_is_killed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let run = Run::new().await;
    let (mut a, addr_a) = run.spawn_store("a");
    let (b, addr_b) = run.spawn_store("b");
    let base = (now_ns() - 3 * 3600 * S) / WINDOW * WINDOW;
    let first = FormulaData::new(base, 200, 60, 3);
    run.produce(first, 20_000).await.unwrap();

    // Each instance ingests half the partitions; once a flush has passed, each answers for all of them.
    let want = first.expected();
    for addr in [addr_a, addr_b] {
        eventually("both stores to answer every window", Duration::from_secs(90), || async {
            compare(&range_of(addr, &first).await, &want, Options::default()).is_clean().then_some(())
        })
        .await;
    }
    assert_eq!(range_of(addr_a, &first).await, range_of(addr_b, &first).await);
    let latest_a = latest(addr_a).await;
    assert_eq!(latest_a, latest(addr_b).await, "Latest answers alike");
    assert_eq!(latest_a.len(), 200);
    for (key, window) in &latest_a {
        assert_eq!(window.start_ns, base + 50 * S, "{key}: the last window of the load");
        assert_eq!(window.count, want[&(key.clone(), window.start_ns)].count);
    }
    let by_series = "SELECT series, count(*) AS windows, sum(\"count\") AS points, max(max) AS top FROM aggregates GROUP BY series ORDER BY series";
    let sql_a = sql(addr_a, by_series).await;
    assert_eq!(sql_a, sql(addr_b, by_series).await, "Sql answers alike");
    assert_eq!(sql_a.len(), 200);
    for (key, windows, points, top) in &sql_a {
        let mine: Vec<&WindowStats> = want.iter().filter(|((k, _), _)| k == key).map(|(_, w)| w).collect();
        assert_eq!(*windows, mine.len() as i64, "{key}");
        assert_eq!(*points, mine.iter().map(|w| w.count).sum::<u64>(), "{key}");
        assert_eq!(*top, mine.iter().map(|w| w.max).fold(f64::NEG_INFINITY, f64::max), "{key}");
    }
    let mut keys: Vec<String> = (0..200).map(FormulaData::key).collect();
    keys.sort();
    // Raw points and alerts are tables of their own, answered alike too.
    let per_series = "SELECT series, count(*), count(DISTINCT time_ns), sum(value) FROM points GROUP BY series ORDER BY series";
    let want_points: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            let mine: Vec<&WindowStats> = want.iter().filter(|((k, _), _)| k == key).map(|(_, w)| w).collect();
            let (count, sum) = (mine.iter().map(|w| w.count).sum::<u64>(), mine.iter().map(|w| w.sum).sum::<f64>());
            // One point a second, so the timestamps are all distinct; the closing point is the last.
            vec![key.clone(), (count + 1).to_string(), (count + 1).to_string(), float(sum)]
        })
        .collect();
    // The points topic is read apart from the aggregates: wait for both stores to have flushed it.
    let points_a = eventually("both stores to hold every point", Duration::from_secs(60), || async {
        let (a, b) = (rows(addr_a, per_series).await, rows(addr_b, per_series).await);
        (a.len() == want_points.len() && a == b).then_some(a)
    })
    .await;
    assert_eq!(points_a, want_points, "each point of the load once (and each series' closing point)");
    let alerts = produce_alerts(&run.topics.alerts.name, 30).await;
    let by_id = "SELECT id, rule, series, state, value, threshold, window_end_ns FROM alerts ORDER BY id, window_end_ns";
    let alerts_a = eventually("both stores to hold every alert", Duration::from_secs(60), || async {
        let (a, b) = (rows(addr_a, by_id).await, rows(addr_b, by_id).await);
        (a.len() == alerts.len() && a == b).then_some(a)
    })
    .await;
    assert_eq!(alerts_a, alerts);
    assert_eq!(list(addr_a, 64).await, keys, "ListSeries pages through every series once");
    assert_eq!(list(addr_b, 7).await, keys);

    // A second load; a is SIGKILLed while it flows, with rows in memory not yet durable. b takes its
    // partitions over from their manifests and reads those rows again.
    let second = FormulaData::new(base + 600 * S, 200, 60, 5);
    let producing = run.produce(second, 4_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!a.kill().success());
    let sent = producing.await.unwrap();
    let mut want_all = first.expected();
    want_all.extend(closing_windows(&first));
    want_all.extend(second.expected());
    let want_second = second.expected();
    eventually("the surviving store to answer the second load", Duration::from_secs(90), || async {
        compare(&range_of(addr_b, &second).await, &want_second, Options::default()).is_clean().then_some(())
    })
    .await;
    assert!(compare(&range_of(addr_b, &first).await, &want, Options::default()).is_clean(), "the first load is still whole");
    let got = eventually("every window to be durable", Duration::from_secs(60), || async {
        let got = stored(&run.objects(), Kind::Aggregates, &run.topics.aggregates.name, 4).await;
        (got.reading.aggregates.len() >= want_all.len()).then_some(got)
    })
    .await;
    let verdict = compare(&got.reading, &want_all, Options::default());
    assert!(verdict.is_clean(), "{sent} points after a was killed:\n{verdict}\nb's log:\n{}", b.log_tail(40));
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);
    drop((a, b));
    run.stop().await;
}
