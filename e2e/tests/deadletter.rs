//! What the processor cannot use goes to the dead-letter topic with its provenance, exactly once:
//! malformed messages, invalid points, points too far in the future (which must not move the watermark), and late
//! points, which a replay sends back to be judged again.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::time::Duration;

use e2e::oracle::{S, Topics, WINDOW, point, series};
use e2e::services::start_processor;
use e2e::{Record, kafka, now_ns, read_committed, unique};
use proto::prost::Message as _;
use proto::v1::dead_letter::Reason;
use proto::v1::{Aggregate, DeadLetter};
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn produce(topic: &str, key: &str, payload: &[u8]) {
    let producer: FutureProducer = kafka().producer("e2e-raw").create().unwrap();
    producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10)).await.unwrap();
}

fn letters(records: &[Record]) -> Vec<DeadLetter> {
    records.iter().map(|r| DeadLetter::decode(r.payload.as_slice()).unwrap()).collect()
}

fn aggregates(records: &[Record]) -> Vec<Aggregate> {
    records.iter().map(|r| Aggregate::decode(r.payload.as_slice()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_points_are_dead_lettered_once_and_late_ones_replay() {
    let topics = Topics::unique(1);
    let (stats, processor) = start_processor(&topics, &unique("e2e-dead")).await;
    let m = series("m", &[("host", "a")]);
    let key = m.key();
    let base = (now_ns() - 3600 * S) / WINDOW * WINDOW;
    let a = point(&m, base + S, 1.0);
    let future = point(&m, now_ns() + 3600 * S, 100.0);
    let b = point(&m, base + 2 * S, 2.0);
    let closer = point(&m, base + 30 * S, 0.0);
    let late = point(&m, base + 3 * S, 50.0);
    for p in [&a] {
        produce(&topics.points.name, &key, &p.encode_to_vec()).await;
    }
    produce(&topics.points.name, &key, b"\x08garbage").await;
    let not_a_number = point(&m, base + 5 * S, f64::NAN);
    for p in [&future, &b, &closer, &late, &not_a_number] {
        produce(&topics.points.name, &key, &p.encode_to_vec()).await;
    }

    // Had the future point moved the watermark, b would be late and the window would hold a alone.
    let windows = aggregates(&read_committed(&kafka(), &topics.aggregates.name, 1, Duration::from_secs(30)));
    assert_eq!(windows.len(), 1);
    let w = windows[0].window.clone().unwrap();
    assert_eq!((w.start_ns, w.count, w.sum), (base, 2, 3.0));

    // Asking for one more than expected shows there is no other (within a short wait).
    let dead = letters(&read_committed(&kafka(), &topics.deadletter.name, 5, Duration::from_secs(3)));
    let reasons: Vec<i32> = dead.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, vec![Reason::Malformed as i32, Reason::Future as i32, Reason::Late as i32, Reason::Invalid as i32]);
    assert_eq!(dead[3].source_offset, 6);
    assert!(dead[3].detail.starts_with("value NaN must be finite"), "{}", dead[3].detail);
    assert_eq!((dead[0].raw.as_slice(), dead[0].point.as_ref(), dead[0].source_offset), (&b"\x08garbage"[..], None, 1));
    assert!(dead[0].detail.starts_with("not a runnel.v1.Point"), "{}", dead[0].detail);
    assert_eq!((dead[1].point.as_ref(), dead[1].source_offset), (Some(&future), 2));
    assert!(dead[1].detail.contains("ahead of the time it was written"), "{}", dead[1].detail);
    assert_eq!((dead[2].point.as_ref(), dead[2].source_offset), (Some(&late), 5));
    assert_eq!((dead[2].window_start_ns, dead[2].window_end_ns), (base, base + WINDOW));
    assert_eq!(stats.dead_letters.load(std::sync::atomic::Ordering::SeqCst), 4);

    // Replaying the late ones sends the late point back; its window is closed, so it is late again, now
    // with the offset of its second arrival. Malformed and future letters are left alone.
    let request = processor::deadletter::Replay {
        deadletter_topic: topics.deadletter.name.clone(),
        points_topic: topics.points.name.clone(),
        group: unique("e2e-replay"),
        reasons: vec![Reason::Late],
        timeout: Duration::from_secs(30),
    };
    let replayed = processor::deadletter::replay(&kafka(), &request).await.unwrap();
    assert_eq!(replayed, processor::deadletter::Replayed { sent: 1, skipped: 3 });
    let dead = letters(&read_committed(&kafka(), &topics.deadletter.name, 6, Duration::from_secs(3)));
    assert_eq!(dead.len(), 5);
    assert_eq!((dead[4].reason, dead[4].point.as_ref(), dead[4].source_offset), (Reason::Late as i32, Some(&late), 7));

    // The group remembers: a second replay sends only the dead letter that arrived since.
    let again = processor::deadletter::replay(&kafka(), &request).await.unwrap();
    assert_eq!(again, processor::deadletter::Replayed { sent: 1, skipped: 0 });
    processor.stop().await;
}
