//! Two processors in one consumer group, the second joining mid-stream: the rebalance moves partitions
//! between them, and the store still holds exactly the aggregates computed independently, once each.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use e2e::oracle::{S, Topics, WINDOW, assert_windows, data, expected, series};
use e2e::services::{range, start_collector, start_processor, start_store, write};
use e2e::{eventually, now_ns, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_joining_mid_stream_changes_no_aggregate() {
    let topics = Topics::unique(4);
    let group = unique("e2e-scale");
    let store_path = std::env::temp_dir().join(unique("runnel-e2e-scale"));
    let (collector_addr, collector) = start_collector(&topics).await;
    let (store_addr, _, store) = start_store(&topics, &unique("e2e-scale-store"), &store_path).await;
    let (first_stats, first) = start_processor(&topics, &group).await;

    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let (a, b, c) = (series("temp", &[("host", "a")]), series("temp", &[("host", "b")]), series("load", &[("host", "c")]));
    let data = data(base, &a, &b, &c);
    let half = data.sent.len() / 2;
    write(collector_addr, &data.sent[..half]).await;
    eventually("the first processor to read the first half", Duration::from_secs(60), || {
        let seen = first_stats.points.load(Ordering::SeqCst) + first_stats.late_points.load(Ordering::SeqCst);
        async move { (seen >= 10).then_some(()) }
    })
    .await;

    // The second instance joins: the group rebalances while windows are open.
    let (second_stats, second) = start_processor(&topics, &group).await;
    eventually("the four partitions to be split between the two processors", Duration::from_secs(60), || {
        let first = first_stats.assigned_partitions.load(Ordering::SeqCst);
        let second = second_stats.assigned_partitions.load(Ordering::SeqCst);
        async move { (first > 0 && second > 0 && first + second == 4).then_some(()) }
    })
    .await;
    write(collector_addr, &data.sent[half..]).await;

    let want = expected(base, &data);
    let got = eventually("the store to hold every closed window", Duration::from_secs(60), || async {
        let mut got = range(store_addr, "temp", base).await;
        got.extend(range(store_addr, "load", base).await);
        (got.values().map(Vec::len).sum::<usize>() >= want.values().map(Vec::len).sum::<usize>()).then_some(got)
    })
    .await;
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (key, windows) in &want {
        assert_windows(key, &got[key], windows);
    }
    let late = first_stats.late_points.load(Ordering::SeqCst) + second_stats.late_points.load(Ordering::SeqCst);
    assert_eq!(late, 1, "the late point is counted once, whichever instance read it");

    collector.stop().await;
    second.stop().await;
    first.stop().await;
    store.stop().await;
    let _ = std::fs::remove_dir_all(&store_path);
}
