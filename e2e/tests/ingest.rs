//! The collector against a real broker: every validation rule refuses the whole batch with
//! INVALID_ARGUMENT naming the index and field, and nothing of a refused batch reaches the topic.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::{Running, kafka, message_count, now_ns, topic};
use proto::tonic::Code;
use proto::tonic_types::StatusExt as _;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::{Point, WriteRequest};

fn point(metric: &str, tags: &[(&str, &str)], ts: i64, value: f64) -> Point {
    Point {
        metric: metric.to_owned(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        timestamp_ns: ts,
        value,
    }
}

async fn start(settings: collector::Settings) -> (SocketAddr, Running<collector::Error>) {
    let app = collector::App::build(settings).await.expect("collector starts");
    let addr = app.grpc_addr();
    (addr, Running::spawn(|shutdown| app.run(shutdown)))
}

fn settings(points: plumbing::kafka::TopicSettings) -> collector::Settings {
    let mut s = collector::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = points;
    s.limits.max_batch_points = 4;
    s.limits.max_tags = 2;
    s.limits.max_metric_len = 16;
    s.limits.max_tag_value_len = 8;
    s.limits.max_age = Duration::from_secs(3600);
    s.limits.max_future = Duration::from_secs(60);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_refuses_the_whole_batch_and_writes_nothing() {
    let points_topic = topic("ingest-points", 2);
    let name = points_topic.name.clone();
    let (addr, running) = start(settings(points_topic)).await;
    let mut client = IngestServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let now = now_ns();
    let good = point("ok", &[("host", "a")], now, 1.0);

    let cases: Vec<(&str, Vec<Point>, &str)> = vec![
        ("empty metric", vec![good.clone(), point("", &[], now, 1.0)], "points[1].metric"),
        ("bad metric character", vec![good.clone(), point("cpu load", &[], now, 1.0)], "points[1].metric"),
        ("metric too long", vec![good.clone(), point("a_very_long_metric_name", &[], now, 1.0)], "points[1].metric"),
        ("NaN", vec![good.clone(), point("m", &[], now, f64::NAN)], "points[1].value"),
        ("infinity", vec![point("m", &[], now, f64::NEG_INFINITY), good.clone()], "points[0].value"),
        ("too old", vec![good.clone(), point("m", &[], now - 7200 * 1_000_000_000, 1.0)], "points[1].timestamp_ns"),
        ("too far ahead", vec![good.clone(), point("m", &[], now + 600 * 1_000_000_000, 1.0)], "points[1].timestamp_ns"),
        ("too many tags", vec![good.clone(), point("m", &[("a", "1"), ("b", "2"), ("c", "3")], now, 1.0)], "points[1].tags"),
        ("bad tag name", vec![good.clone(), point("m", &[("9lives", "1")], now, 1.0)], "points[1].tags"),
        ("empty tag value", vec![good.clone(), point("m", &[("k", "")], now, 1.0)], "points[1].tags[\"k\"]"),
        ("tag value too long", vec![good.clone(), point("m", &[("k", "123456789")], now, 1.0)], "points[1].tags[\"k\"]"),
        ("batch too large", vec![good.clone(); 5], "points"),
    ];
    for (rule, points, field) in cases {
        let status = client.write(WriteRequest { points }).await.expect_err(rule);
        assert_eq!(status.code(), Code::InvalidArgument, "{rule}: {status:?}");
        assert!(status.message().starts_with(&format!("{field}: ")), "{rule}: message {:?}", status.message());
        let details = status.get_details_bad_request().unwrap_or_else(|| panic!("{rule}: no BadRequest details"));
        assert_eq!(details.field_violations.len(), 1, "{rule}");
        assert_eq!(details.field_violations[0].field, field, "{rule}");
    }

    // Several bad points: every one is listed.
    let status = client
        .write(WriteRequest { points: vec![point("", &[], now, f64::NAN), good.clone(), point("m", &[("k", "")], now, 1.0)] })
        .await
        .unwrap_err();
    let fields: Vec<String> =
        status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, vec!["points[0].metric", "points[0].value", "points[2].tags[\"k\"]"]);
    assert!(status.message().ends_with("(and 2 more violations)"), "{}", status.message());

    // The stream variant: the first message is written, the second refused, and the error says so.
    let stream = futures::stream::iter(vec![
        WriteRequest { points: vec![good.clone(), point("ok", &[("host", "b")], now, 2.0)] },
        WriteRequest { points: vec![good.clone(), point("m", &[], now, f64::NAN)] },
        WriteRequest { points: vec![good.clone()] },
    ]);
    let status = client.write_stream(stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "stream message 1 refused, 2 points of earlier messages accepted: points[1].value: NaN is not a finite number"
    );

    // Only the two points of the accepted stream message and the three of this batch reach the topic.
    let reply = client
        .write(WriteRequest { points: vec![good.clone(), point("ok", &[("host", "c")], now, 3.0), point("ok", &[], now, 4.0)] })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().accepted, 3);
    running.stop().await;
    assert_eq!(message_count(&kafka(), &name), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_each_message_in_order_and_goes_on_after_a_refusal() {
    use futures::StreamExt as _;

    let points_topic = topic("ingest-acked", 2);
    let name = points_topic.name.clone();
    let (addr, running) = start(settings(points_topic)).await;
    let mut client = IngestServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let now = now_ns();
    let good = |n: usize| WriteRequest { points: (0..n).map(|i| point("ok", &[("host", "a")], now, i as f64)).collect() };
    let messages = vec![
        good(2),
        WriteRequest { points: vec![point("ok", &[], now, 1.0), point("m", &[], now, f64::NAN)] },
        good(3),
        good(1),
        good(5), // past the batch limit of 4
        good(4),
    ];
    let acks: Vec<proto::v1::WriteAck> =
        client.write_acked(futures::stream::iter(messages)).await.unwrap().into_inner().map(|a| a.unwrap()).collect().await;
    let summary: Vec<(u64, u64, i32)> = acks.iter().map(|a| (a.sequence, a.accepted, a.code)).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(summary, vec![(0, 2, 0), (1, 0, invalid), (2, 3, 0), (3, 1, 0), (4, 0, invalid), (5, 4, 0)]);
    assert_eq!(acks[1].message, "points[1].value: NaN is not a finite number");
    assert_eq!(acks[1].violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), vec!["points[1].value"]);
    running.stop().await;
    assert_eq!(message_count(&kafka(), &name), 10, "exactly the points of the acknowledged messages");
}
