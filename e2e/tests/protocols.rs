//! The collector's protocols against a real broker: InfluxDB line protocol as Telegraf sends it,
//! Prometheus remote write, OTLP metrics (gRPC and HTTP) and JSON batches land in the points topic
//! point for point, in plaintext and over TLS; every refusal answers with the documented
//! status and a JSON body naming each bad point's index, line and field, and writes nothing.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::{Running, kafka, message_count, now_ns, read_committed, topic};
use flate2::Compression;
use flate2::write::GzEncoder;
use proto::prost::Message as _;
use proto::v1::Point;
use reqwest::StatusCode;

const S: i64 = 1_000_000_000;

/// A collector on the test's topic; returns its HTTP and gRPC base URLs.
async fn start_both(
    points: plumbing::kafka::TopicSettings,
    limits: impl FnOnce(&mut collector::config::Limits),
    auth: impl FnOnce(&mut collector::config::AuthSettings),
) -> (String, String, Running<collector::Error>) {
    let mut s = settings(points);
    limits(&mut s.limits);
    auth(&mut s.auth);
    let (http, grpc, running) = start_with(s).await;
    (format!("http://{http}"), format!("http://{grpc}"), running)
}

/// Collector settings on this broker and the test's topic, listening on loopback port 0.
fn settings(points: plumbing::kafka::TopicSettings) -> collector::Settings {
    let mut s = collector::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = points;
    s
}

/// A running collector and its HTTP and gRPC addresses.
async fn start_with(settings: collector::Settings) -> (SocketAddr, SocketAddr, Running<collector::Error>) {
    let app = collector::App::build(settings).await.expect("collector starts");
    let (http, grpc) = (app.http_addr(), app.grpc_addr());
    (http, grpc, Running::spawn(|shutdown| app.run(shutdown)))
}

async fn start(points: plumbing::kafka::TopicSettings, limits: impl FnOnce(&mut collector::config::Limits)) -> (String, Running<collector::Error>) {
    let (http, _, running) = start_both(points, limits, |_| {}).await;
    (http, running)
}

fn point(metric: &str, tags: &[(&str, &str)], ts: i64, value: f64) -> Point {
    Point { metric: metric.into(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), timestamp_ns: ts, value }
}

/// The first `want` points in `topic`, in [`sorted`] order.
fn points_in(topic: &str, want: usize) -> Vec<Point> {
    let records = read_committed(&kafka(), topic, want, Duration::from_secs(30));
    sorted(records.iter().map(|r| Point::decode(r.payload.as_slice()).unwrap()).collect())
}

/// Replays a request recorded by e2e/recorders (`tests/data/<name>.body` and `.request.json`) to
/// the collector at `url`: the same path, headers and body bytes, the body sent chunked when it was.
async fn recorded(client: &reqwest::Client, url: &str, name: &str) -> reqwest::Response {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let body = std::fs::read(data.join(format!("{name}.body"))).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join(format!("{name}.request.json"))).unwrap()).unwrap();
    assert_eq!(request["method"], "POST");
    let headers = request["headers"].as_object().unwrap();
    let mut builder = client.post(format!("{url}{}", request["path"].as_str().unwrap()));
    for (header, value) in headers {
        // The connection's own headers are the client's to set.
        if !["host", "content-length", "transfer-encoding"].contains(&header.to_ascii_lowercase().as_str()) {
            builder = builder.header(header, value.as_str().unwrap());
        }
    }
    let chunked = headers.get("Transfer-Encoding").is_some_and(|v| v == "chunked");
    let body = if chunked {
        reqwest::Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(body)]))
    } else {
        reqwest::Body::from(body)
    };
    builder.body(body).send().await.unwrap()
}

/// In series key, then time, then value order: the order a comparison of two sets of points needs.
fn sorted(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by(|a, b| (a.series_key(), a.timestamp_ns).cmp(&(b.series_key(), b.timestamp_ns)).then(a.value.total_cmp(&b.value)));
    points
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_as_telegraf_sends_it_lands_point_for_point() {
    let points_topic = topic("http-points", 3);
    let name = points_topic.name.clone();
    // The recorded body is from 2025-11-24: let the collector take points that old.
    let (url, running) = start(points_topic, |l| l.max_age = Duration::from_secs(20 * 365 * 86_400)).await;
    let client = reqwest::Client::new();

    // What Telegraf 1.37's influxdb_v2 output sent, recorded by e2e/recorders from Telegraf's own
    // code: a gzip body sent chunked, nanosecond timestamps, unsigned integers as `i`, the token,
    // bucket and org.
    let reply = recorded(&client, &url, "telegraf/influxdb_v2").await;
    assert_eq!(reply.status(), StatusCode::NO_CONTENT, "{:?}", reply.text().await);
    assert_eq!(reply.headers()["runnel-accepted-points"], "11");
    assert_eq!(reply.headers()["runnel-ignored-values"], "1", "uptime_format is a string");
    let t = 1_764_000_000 * S;
    let host = ("host", "edge-7");
    let want = sorted(vec![
        point("cpu_usage_idle", &[("cpu", "cpu-total"), host], t, 97.2),
        point("cpu_usage_system", &[("cpu", "cpu-total"), host], t, 1.1),
        point("cpu_usage_user", &[("cpu", "cpu-total"), host], t, 1.7),
        point("mem_available", &[host], t, 6_012_345_344.0),
        point("mem_used_percent", &[host], t, 24.9),
        point("system_load1", &[host], t, 0.42),
        point("system_n_cpus", &[host], t, 2.0),
        point("net_bytes_recv", &[host, ("interface", "eth0")], t, 123_456_789.0),
        point("net_err_in", &[host, ("interface", "eth0")], t, 0.0),
        point("disk_used_percent", &[("device", "sda1"), ("fstype", "ext4"), host, ("mode", "rw"), ("path", "/")], t, 41.5),
        point("diskio_io_time", &[host, ("name", "sda")], t + 10 * S, 1234.0),
    ]);
    let now = now_ns() / S * S;
    let reply = client
        .post(format!("{url}/api/v1/points"))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"points":[{{"metric":"json_gauge","tags":{{"host":"edge-7"}},"timestamp_ns":"{now}","value":-2.5}}]}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.text().await.unwrap(), r#"{"accepted":1,"dead_lettered":0}"#);

    // Seconds precision, plain body, no timestamp on the second line (the collector's clock).
    let before = now_ns();
    let reply = client
        .post(format!("{url}/api/v2/write?precision=s"))
        .body(format!("probe,host=edge-7 value=1 {}\nprobe,host=edge-8 value=2\n", now / S))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    let after = now_ns();

    running.stop().await;
    assert_eq!(message_count(&kafka(), &name), 14, "11 from Telegraf's body, 1 JSON, 2 probes, and nothing else");
    let got = points_in(&name, 14);
    let clocked = got.iter().find(|p| p.tags.get("host").is_some_and(|h| h == "edge-8")).unwrap();
    assert!((before..=after).contains(&clocked.timestamp_ns), "a line without a timestamp takes the clock");
    let mut all = want.clone();
    all.push(point("json_gauge", &[host], now, -2.5));
    all.push(point("probe", &[host], now, 1.0));
    all.push(point("probe", &[("host", "edge-8")], clocked.timestamp_ns, 2.0));
    assert_eq!(got, sorted(all));
    // Keyed by series, as the processor's partitioning needs (a series always lands in one partition).
    let records = read_committed(&kafka(), &name, 14, Duration::from_secs(30));
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for r in &records {
        let key = Point::decode(r.payload.as_slice()).unwrap().series_key();
        assert_eq!(*partition_of.entry(key).or_insert(r.partition), r.partition);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_lands_sample_for_sample() {
    use proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

    let points_topic = topic("http-prom", 2);
    let name = points_topic.name.clone();
    let (url, running) = start(points_topic, |l| l.max_age = Duration::from_secs(20 * 365 * 86_400)).await;
    let series = |labels: &[(&str, &str)], samples: &[(f64, i64)]| TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
        samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
        histograms: Vec::new(),
    };
    // What Prometheus 3.8's remote-write client sent, recorded by e2e/recorders from Prometheus's
    // own code and its prompb types: labels sorted by name, samples in time order, a staleness
    // marker for a series that went away, a classic histogram bucket as a series of its own.
    let reply = recorded(&reqwest::Client::new(), &url, "prometheus/remote_write_v1").await;
    assert_eq!(reply.status(), StatusCode::NO_CONTENT, "{:?}", reply.text().await);
    assert_eq!(reply.headers()["runnel-accepted-points"], "4");
    assert_eq!(reply.headers()["runnel-ignored-values"], "1", "the staleness marker");
    let ms = 1_764_000_000_000;

    // A series without a name is refused by its index, and nothing of the request is written.
    let bad = WriteRequest { timeseries: vec![series(&[("__name__", "up")], &[(1.0, ms)]), series(&[("job", "node")], &[(1.0, ms)])] };
    let reply = reqwest::Client::new()
        .post(format!("{url}/api/v1/push"))
        .header("Content-Encoding", "snappy")
        .body(snap::raw::Encoder::new().compress_vec(&bad.encode_to_vec()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(json["errors"][0]["field"], "timeseries[1].labels", "{json}");

    running.stop().await;
    assert_eq!(message_count(&kafka(), &name), 4);
    let node = [("instance", "edge-7:9100"), ("job", "node")];
    let ns = |ms: i64| ms * 1_000_000;
    assert_eq!(
        points_in(&name, 4),
        sorted(vec![
            point("up", &node, ns(ms - 15_000), 1.0),
            point("up", &node, ns(ms), 1.0),
            point("node_load1", &node, ns(ms), 0.42),
            point("http_request_duration_seconds_bucket", &[("job", "api"), ("le", "+Inf")], ns(ms), 1027.0),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_over_grpc_and_http_land_as_documented() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    let points_topic = topic("otlp-points", 2);
    let name = points_topic.name.clone();
    let (http, grpc, running) = start_both(points_topic, |_| {}, |_| {}).await;
    let t = now_ns() / S * S;
    let kv = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    };
    // What an OpenTelemetry SDK exports: a resource naming the service (and attributes that are not
    // its identity), a cumulative counter, a gauge and an explicit-bucket histogram.
    let export = |service: &str| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", service), kv("telemetry.sdk.language", "rust")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "http.server.requests".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: vec![NumberDataPoint { attributes: vec![kv("http.route", "/pay")], time_unix_nano: t as u64, value: Some(Value::AsInt(41)), ..Default::default() }],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "queue.depth".into(),
                        data: Some(Data::Gauge(Gauge { data_points: vec![NumberDataPoint { time_unix_nano: t as u64, value: Some(Value::AsDouble(3.5)), ..Default::default() }] })),
                        ..Default::default()
                    },
                    Metric {
                        name: "rpc.duration".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint { time_unix_nano: t as u64, count: 4, sum: Some(1.5), bucket_counts: vec![3, 1], explicit_bounds: vec![0.25], ..Default::default() }],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };

    let mut client = MetricsServiceClient::connect(grpc).await.unwrap();
    client.export(export("checkout")).await.unwrap();
    let reply = reqwest::Client::new()
        .post(format!("{http}/v1/metrics"))
        .header("Content-Type", "application/x-protobuf")
        .body(export("billing").encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "{:?}", reply.text().await);
    let reply = reqwest::Client::new().post(format!("{http}/v1/metrics")).header("Content-Type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    running.stop().await;
    let mut want = Vec::new();
    for service in ["checkout", "billing"] {
        let svc = ("service.name", service);
        want.push(point("http.server.requests", &[("http.route", "/pay"), svc], t, 41.0));
        want.push(point("queue.depth", &[svc], t, 3.5));
        want.push(point("rpc.duration_count", &[svc], t, 4.0));
        want.push(point("rpc.duration_sum", &[svc], t, 1.5));
        want.push(point("rpc.duration_bucket", &[("le", "0.25"), svc], t, 3.0));
        want.push(point("rpc.duration_bucket", &[("le", "+Inf"), svc], t, 4.0));
    }
    assert_eq!(message_count(&kafka(), &name), 12);
    assert_eq!(points_in(&name, 12), sorted(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_strangers_out_and_tenants_apart() {
    use futures::StreamExt as _;
    use proto::tonic::Code;
    use proto::v1::WriteRequest;
    use proto::v1::ingest_service_client::IngestServiceClient;
    use collector::config::TokenSettings;

    const A: &str = "token-of-tenant-a-0001";
    const B: &str = "token-of-tenant-b-0002";
    let points_topic = topic("auth-points", 2);
    let name = points_topic.name.clone();
    let (http, grpc, running) = start_both(points_topic, |_| {}, |auth| {
        auth.tokens = vec![
            TokenSettings { token: A.into(), tenant: "a".into(), points_per_second: Some(1), burst_points: Some(50), max_series: None },
            TokenSettings { token: B.into(), tenant: "b".into(), points_per_second: None, burst_points: None, max_series: Some(2) },
        ];
    })
    .await;
    let t = now_ns() / S * S;
    let client = reqwest::Client::new();

    // 10,000 requests without a valid token, over every endpoint: every one refused with 401.
    let bad_headers = [None, Some("Token wrong-token-0000000000"), Some(A), Some("Token token-of-tenant-a-000"), Some("Bearer token-of-tenant-a-00011"), Some("Basic dG9rZW4=")];
    let endpoints = ["/api/v2/write", "/api/v1/points", "/api/v1/write", "/v1/metrics"];
    let statuses: Vec<StatusCode> = futures::stream::iter(0..10_000usize)
        .map(|i| {
            let mut request = client.post(format!("{http}{}", endpoints[i % endpoints.len()])).body(format!("stranger value={i} {t}"));
            if let Some(header) = bad_headers[i % bad_headers.len()] {
                request = request.header("Authorization", header);
            }
            async move { request.send().await.unwrap().status() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(statuses.len(), 10_000);
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{:?}", statuses.iter().find(|s| **s != StatusCode::UNAUTHORIZED));
    let mut ingest = IngestServiceClient::connect(grpc.clone()).await.unwrap();
    let status = ingest.write(WriteRequest { points: vec![point("stranger", &[], t, 1.0)] }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // `runnel send` carries a token too: without one it is refused and says why.
    let csv = std::env::temp_dir().join(e2e::unique("runnel-token")).with_extension("csv");
    std::fs::write(&csv, format!("timestamp,value\n{},7\n", t / S)).unwrap();
    let runnel = |token: &[&str]| {
        std::process::Command::new(e2e::process::bin("runnel")).args(["--collector", &grpc]).args(token).args(["send", csv.to_str().unwrap(), "--metric", "cli"]).output().unwrap()
    };
    let out = runnel(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("an API token is required"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = runnel(&["--token", A]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&csv).unwrap();

    // A's token writes as tenant a, B's as b; over gRPC the token is metadata.
    let write = |token: &'static str, body: String| {
        client.post(format!("{http}/api/v2/write")).header("Authorization", format!("Token {token}")).body(body).send()
    };
    assert_eq!(write(A, format!("m,host=x value=1 {t}")).await.unwrap().status(), StatusCode::NO_CONTENT);
    let mut request = proto::tonic::Request::new(WriteRequest { points: vec![point("m", &[("host", "x")], t, 2.0)] });
    request.metadata_mut().insert("authorization", format!("Bearer {B}").parse().unwrap());
    ingest.write(request).await.unwrap();

    // A cannot write into b's series: a point naming tenant b is refused, and nothing of its request is written.
    let reply = write(A, format!("m,host=y value=3 {t}\nm,host=x,tenant=b value=3 {t}")).await.unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!((json["errors"][0]["index"].clone(), json["errors"][0]["field"].clone()), (serde_json::json!(1), serde_json::json!("tags[\"tenant\"]")), "{json}");

    // B may have 2 series: it has m{host="x"}; of s1 and s2 only one more fits, so the batch is
    // refused naming s2, and admits nothing; s1 alone is then written.
    let reply = write(B, format!("s1 value=1 {t}\ns2 value=2 {t}")).await.unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
    assert_eq!(json["errors"][0]["index"], 1, "{json}");
    assert!(json["message"].as_str().unwrap().contains("s2{tenant=\"b\"} would be a new series of tenant \"b\""), "{json}");
    assert_eq!(write(B, format!("s1 value=1 {t}")).await.unwrap().status(), StatusCode::NO_CONTENT);

    // A's rate: a burst of 50 points at 1 point a second. 2 are spent; 45 more fit, 10 more must wait,
    // and 60 at once never fit.
    let lines = |n: usize, from: usize| (from..from + n).map(|i| format!("burst value={i} {t}\n")).collect::<String>();
    assert_eq!(write(A, lines(45, 0)).await.unwrap().status(), StatusCode::NO_CONTENT);
    let reply = write(A, lines(10, 45)).await.unwrap();
    assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(write(A, lines(60, 100)).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);

    running.stop().await;
    let a = [("tenant", "a")];
    let mut want = vec![
        point("m", &[("host", "x"), a[0]], t, 1.0),
        point("m", &[("host", "x"), ("tenant", "b")], t, 2.0),
        point("s1", &[("tenant", "b")], t, 1.0),
        point("cli", &a, t, 7.0),
    ];
    want.extend((0..45).map(|i| point("burst", &a, t, f64::from(i))));
    assert_eq!(message_count(&kafka(), &name), 49, "runnel send's point, the two first writes, s1 and the 45 of the burst, nothing of the strangers");
    assert_eq!(points_in(&name, 49), sorted(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnel_send_delivers_csv_and_ndjson_files_and_follows_a_growing_one() {
    let points_topic = topic("send-points", 2);
    let name = points_topic.name.clone();
    let (_, grpc, running) = start_both(points_topic, |_| {}, |_| {}).await;
    let dir = std::env::temp_dir().join(e2e::unique("runnel-send"));
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = now_ns() / S - 3600;
    let runnel = |args: &[&str]| std::process::Command::new(e2e::process::bin("runnel")).arg("--collector").arg(&grpc).args(args).output().unwrap();

    // 2,500 rows, every seventh without humidity: 3 batches of up to 1,000 points.
    let mut csv = String::from("timestamp,sensor,temperature,humidity\n");
    let mut want = Vec::new();
    for i in 0..2_500i64 {
        let (ts, sensor, temperature) = (t0 + i, format!("s{}", i % 4), 20.0 + (i % 10) as f64 / 4.0);
        let humidity = if i % 7 == 0 { String::new() } else { format!("{}", 40 + i % 5) };
        csv.push_str(&format!("{ts},{sensor},{temperature},{humidity}\n"));
        let tags = [("sensor", sensor.as_str()), ("site", "lab")];
        want.push(point("env_temperature", &tags, ts * S, temperature));
        if !humidity.is_empty() {
            want.push(point("env_humidity", &tags, ts * S, humidity.parse().unwrap()));
        }
    }
    std::fs::write(dir.join("data.csv"), &csv).unwrap();
    let out = runnel(&["send", dir.join("data.csv").to_str().unwrap(), "--metric", "env", "--tag-columns", "sensor", "--tag", "site=lab"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("sent {} points from 2501 lines of {}, each acknowledged\n", want.len(), dir.join("data.csv").display()));

    // NDJSON with a bad value on line 3: refused, naming the line and column; nothing of it is sent.
    let ndjson = format!("{{\"timestamp\":{t0},\"v\":1}}\n{{\"timestamp\":{t0},\"v\":2}}\n{{\"timestamp\":{t0},\"v\":\"warm\"}}\n");
    std::fs::write(dir.join("bad.ndjson"), ndjson).unwrap();
    let out = runnel(&["send", dir.join("bad.ndjson").to_str().unwrap(), "--metric", "nd"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3: column \"v\": \"warm\" is not a number"), "{}", String::from_utf8_lossy(&out.stderr));

    // Following: the rows there at the start, then the rows appended later, then an interrupt.
    let growing = dir.join("growing.csv");
    std::fs::write(&growing, format!("timestamp,value\n{t0},1\n{},2\n", t0 + 1)).unwrap();
    let mut follower = std::process::Command::new(e2e::process::bin("runnel"))
        .args(["--collector", &grpc, "send", growing.to_str().unwrap(), "--metric", "grown", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let expected = want.len() as i64;
    e2e::eventually("the first rows", Duration::from_secs(30), || async { (message_count(&kafka(), &name) == expected + 2).then_some(()) }).await;
    let mut file = std::fs::OpenOptions::new().append(true).open(&growing).unwrap();
    write!(file, "{},3\n{},4\n{},5\n", t0 + 2, t0 + 3, t0 + 4).unwrap();
    drop(file);
    e2e::eventually("the appended rows", Duration::from_secs(30), || async { (message_count(&kafka(), &name) == expected + 5).then_some(()) }).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(follower.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = follower.wait().unwrap();
    assert!(status.success(), "an interrupt ends a follow cleanly: {status:?}");
    let mut printed = String::new();
    std::io::Read::read_to_string(follower.stdout.as_mut().unwrap(), &mut printed).unwrap();
    assert!(printed.starts_with("sent 5 points from 6 lines"), "{printed}");

    running.stop().await;
    want.extend((0..5).map(|i| point("grown", &[], (t0 + i) * S, (i + 1) as f64)));
    assert_eq!(message_count(&kafka(), &name), want.len() as i64);
    assert_eq!(points_in(&name, want.len()), sorted(want));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_accepts_partial_batches_dead_letters_each_bad_point_with_its_bytes() {
    use proto::v1::DeadLetter;
    use proto::v1::dead_letter::Reason;
    use proto::v1::ingest_service_client::IngestServiceClient;
    use proto::v1::WriteRequest;

    let points_topic = topic("partial-points", 2);
    let name = points_topic.name.clone();
    let deadletter = topic("partial-deadletter", 1);
    let deadletter_name = deadletter.name.clone();
    let mut s = collector::Settings::default();
    s.kafka = kafka();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = points_topic;
    s.topics.deadletter = deadletter;
    s.accept_partial.line_protocol = true;
    s.accept_partial.grpc = true;
    let app = collector::App::build(s).await.unwrap();
    let (http, grpc) = (format!("http://{}", app.http_addr()), format!("http://{}", app.grpc_addr()));
    let running = Running::spawn(|shutdown| app.run(shutdown));
    let t = now_ns() / S * S;

    // Line 2 is not line protocol, line 3's metric breaks a rule: both dead-lettered, lines 1 and 4 written.
    let body = format!("ok,host=a value=1 {t}\nthis is not line protocol\n9lives,host=a value=2 {t}\nok,host=b value=3 {t}\n");
    let reply = reqwest::Client::new().post(format!("{http}/api/v2/write")).body(body).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    assert_eq!((&reply.headers()["runnel-accepted-points"], &reply.headers()["runnel-dead-lettered"]), (&"2".parse().unwrap(), &"2".parse().unwrap()));

    // gRPC: the middle point is NaN.
    let mut client = IngestServiceClient::connect(grpc).await.unwrap();
    let nan = point("g", &[], t, f64::NAN);
    let reply = client.write(WriteRequest { points: vec![point("g", &[], t, 1.0), nan.clone(), point("g", &[], t, 2.0)] }).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.dead_lettered), (2, 1));
    running.stop().await;

    assert_eq!(message_count(&kafka(), &name), 4);
    assert_eq!(
        points_in(&name, 4),
        sorted(vec![point("ok", &[("host", "a")], t, 1.0), point("ok", &[("host", "b")], t, 3.0), point("g", &[], t, 1.0), point("g", &[], t, 2.0)])
    );
    let letters: Vec<DeadLetter> = read_committed(&kafka(), &deadletter_name, 3, Duration::from_secs(30))
        .iter()
        .map(|r| DeadLetter::decode(r.payload.as_slice()).unwrap())
        .collect();
    assert_eq!(letters.len(), 3);
    let find = |raw: &[u8]| letters.iter().find(|l| l.raw == raw).unwrap_or_else(|| panic!("no letter with raw {:?}", String::from_utf8_lossy(raw)));
    let malformed = find(b"this is not line protocol");
    assert_eq!((malformed.reason, malformed.point.is_none(), malformed.service.as_str()), (Reason::Malformed as i32, true, "collector"));
    assert!(malformed.detail.starts_with("line 2: line: "), "{}", malformed.detail);
    let invalid = find(format!("9lives,host=a value=2 {t}").as_bytes());
    assert_eq!((invalid.reason, invalid.point.clone()), (Reason::Invalid as i32, Some(point("9lives", &[("host", "a")], t, 2.0))));
    assert!(invalid.detail.starts_with("line 3: points[1].metric: "), "{}", invalid.detail);
    let grpc_letter = find(&nan.encode_to_vec());
    assert_eq!(grpc_letter.reason, Reason::Invalid as i32);
    assert_eq!(grpc_letter.detail, "points[1].value: NaN is not a finite number");
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_index_line_and_field_and_write_nothing() {
    let points_topic = topic("http-refused", 2);
    let name = points_topic.name.clone();
    let (url, running) = start(points_topic, |l| {
        l.max_batch_points = 4;
        l.max_request_bytes = 64 * 1024;
        l.max_decompressed_bytes = 1024 * 1024;
        l.max_age = Duration::from_secs(3600);
    })
    .await;
    let client = reqwest::Client::new();
    let t = now_ns();
    let post = |path: &str, body: Vec<u8>, encoding: Option<&str>| {
        let mut request = client.post(format!("{url}{path}")).body(body);
        if let Some(encoding) = encoding {
            request = request.header("Content-Encoding", encoding);
        }
        async move {
            let reply = request.send().await.unwrap();
            let status = reply.status();
            let retry_after = reply.headers().get("retry-after").cloned();
            let json: serde_json::Value = serde_json::from_str(&reply.text().await.unwrap()).unwrap();
            assert!(retry_after.is_none(), "a refusal of the request itself is not retried");
            (status, json)
        }
    };
    let errors = |json: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value, String)> {
        json["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["index"].clone(), e["line"].clone(), e["field"].as_str().unwrap().to_owned()))
            .collect()
    };
    use serde_json::Value::Null;
    use serde_json::json;

    // Points that parse but break the rules: each named by its point index, its line and its field.
    let body = format!("ok,host=a value=1 {t}\n# a comment\n9lives value=2 {t}\nok value=3 1\n");
    let (status, json) = post("/api/v2/write", body.into_bytes(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["code"], "invalid");
    assert_eq!(errors(&json), vec![(json!(1), json!(3), "metric".to_owned()), (json!(2), json!(4), "timestamp_ns".to_owned())]);
    assert!(json["message"].as_str().unwrap().starts_with("line 3: points[1].metric: "), "{json}");

    // Lines that are not line protocol: each named by its line.
    let body = format!("ok value=1 {t}\nthis is not line protocol\nok value=2 {t}\nok,tag value=3\n");
    let (status, json) = post("/api/v2/write", body.into_bytes(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errors(&json), vec![(Null, json!(2), "line".to_owned()), (Null, json!(4), "line".to_owned())]);

    // JSON: a point that is not a point, by index.
    let body = format!(r#"{{"points":[{{"metric":"ok","timestamp_ns":{t},"value":1}},{{"metric":"ok","value":2}}]}}"#);
    let (status, json) = post("/api/v1/points", body.into_bytes(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(errors(&json), vec![(json!(1), Null, String::new())]);
    assert!(json["message"].as_str().unwrap().contains("timestamp_ns"), "{json}");
    let (status, json) = post("/api/v1/points", br#"{"points":[],"extra":1}"#.to_vec(), None).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")));

    // The request's own parameters and encoding.
    let (status, json) = post("/api/v2/write?precision=h", b"ok value=1".to_vec(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["message"], "precision: precision \"h\" is not one of ns, us, ms, s");
    let (status, _) = post("/api/v2/write", b"ok value=1".to_vec(), Some("br")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, json) = post("/api/v2/write", b"not gzip at all".to_vec(), Some("gzip")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");

    // Sizes: too many points (413, so that Telegraf splits the batch), a body past the limit, a gzip bomb.
    let five: String = (0..5).map(|i| format!("ok value={i} {t}\n")).collect();
    let (status, json) = post("/api/v2/write", five.into_bytes(), None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["message"], "points: batch of 5 points exceeds the limit of 4");
    let (status, json) = post("/api/v2/write", vec![b'#'; 64 * 1024 + 1], None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["message"], "request body exceeds the limit of 65536 bytes");

    // 64 MiB of zeros gzip to about 64 KiB; the collector inflates only up to its 1 MiB limit.
    let bomb = {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap()
    };
    assert!(bomb.len() < 64 * 1024, "the bomb fits the request limit: {} bytes", bomb.len());
    let peak_before = peak_rss();
    let (status, json) = post("/api/v2/write", bomb, Some("gzip")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["message"], "decompressed body exceeds the limit of 1048576 bytes");
    let growth = peak_rss().saturating_sub(peak_before);
    assert!(growth < 16 * 1024 * 1024, "inflating the bomb grew the peak memory by {growth} bytes");

    // Nothing of any refused request was written; a good one after them is.
    let reply = client.post(format!("{url}/api/v2/write")).body(format!("ok,host=a value=7 {t}")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    running.stop().await;
    assert_eq!(message_count(&kafka(), &name), 1);
    assert_eq!(points_in(&name, 1), vec![point("ok", &[("host", "a")], t, 7.0)]);
}

/// Writes one point over gRPC to `url` (`https://...` for TLS); connection and call errors alike come
/// back as the error's text, since a refused handshake may show at either.
async fn grpc_write(url: String, tls: Option<proto::tonic::transport::ClientTlsConfig>, point: Point) -> Result<u64, String> {
    use proto::v1::WriteRequest;
    use proto::v1::ingest_service_client::IngestServiceClient;
    let mut endpoint = proto::tonic::transport::Channel::from_shared(url).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let reply = IngestServiceClient::new(channel).write(WriteRequest { points: vec![point] }).await.map_err(|e| format!("write: {e:?}"))?;
    Ok(reply.into_inner().accepted)
}

/// An HTTPS client that trusts `ca` and presents `identity` if given.
fn https_client(ca: &std::path::Path, identity: Option<&e2e::certs::Pem>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(pem) = identity {
        let mut both = pem.cert_pem();
        both.extend(pem.key_pem());
        builder = builder.identity(reqwest::Identity::from_pem(&both).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_keeps_the_wire_private_and_mutual_tls_keeps_strangers_out() {
    use collector::config::TlsSettings;
    use e2e::certs::Authority;
    use proto::tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let dir = std::env::temp_dir().join(e2e::unique("runnel-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Authority::new("runnel test ca");
    let ca_file = ca.write_ca(&dir, "ca.crt");
    let server = ca.server(&dir, "collector");
    let agent = ca.client(&dir, "fleet-agent");
    let stranger = Authority::new("someone else's ca").client(&dir, "stranger");
    let points_topic = topic("tls-points", 2);
    let name = points_topic.name.clone();
    let t = now_ns() / S * S;

    // Startup refuses what cannot work and names the setting: a key that is not the certificate's,
    // a CA file with no certificate in it.
    let other = ca.server(&dir, "other");
    let mut s = settings(points_topic.clone());
    s.tls = Some(TlsSettings { cert: server.cert.clone(), key: other.key.clone(), client_ca: None });
    let err = collector::App::build(s).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("tls.key {}: ", other.key.display())), "{err}");
    let mut s = settings(points_topic.clone());
    s.tls = Some(TlsSettings { cert: server.cert.clone(), key: server.key.clone(), client_ca: Some(server.key.clone()) });
    let err = collector::App::build(s).await.unwrap_err().to_string();
    assert_eq!(err, format!("tls.client_ca {}: no PEM certificate in the file", server.key.display()));

    // Mutual TLS: only a client whose certificate this CA signed gets through, on either listener.
    let mut s = settings(points_topic.clone());
    s.tls = Some(TlsSettings { cert: server.cert.clone(), key: server.key.clone(), client_ca: Some(ca_file.clone()) });
    let (http, grpc, mutual) = start_with(s).await;
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&ca_file).unwrap())).domain_name("localhost");
    let as_agent = trust.clone().identity(Identity::from_pem(agent.cert_pem(), agent.key_pem()));
    let as_stranger = trust.clone().identity(Identity::from_pem(stranger.cert_pem(), stranger.key_pem()));
    let https = format!("https://{grpc}");
    assert_eq!(grpc_write(https.clone(), Some(as_agent), point("mtls_grpc", &[], t, 1.0)).await, Ok(1));
    for (who, tls) in [("no certificate", Some(trust.clone())), ("a stranger's certificate", Some(as_stranger))] {
        let refused = grpc_write(https.clone(), tls, point("mtls_grpc", &[], t, 2.0)).await;
        assert!(refused.is_err(), "gRPC with {who} must be refused: {refused:?}");
    }
    let plain = grpc_write(format!("http://{grpc}"), None, point("mtls_grpc", &[], t, 3.0)).await;
    assert!(plain.is_err(), "plaintext gRPC must be refused: {plain:?}");

    let url = format!("https://{http}/api/v2/write");
    let reply = https_client(&ca_file, Some(&agent)).post(&url).body(format!("mtls_http value=1 {t}")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    for (who, client) in [("no certificate", https_client(&ca_file, None)), ("a stranger's certificate", https_client(&ca_file, Some(&stranger)))] {
        let refused = client.post(&url).body(format!("mtls_http value=2 {t}")).send().await;
        assert!(refused.is_err(), "HTTPS with {who} must be refused: {refused:?}");
    }
    let plain = reqwest::Client::new().post(format!("http://{http}/api/v2/write")).body(format!("mtls_http value=3 {t}")).send().await;
    assert!(plain.as_ref().map_or(true, |r| !r.status().is_success()), "plaintext HTTP must be refused: {plain:?}");
    // A client that does not trust the collector's CA refuses it in turn.
    let untrusting = https_client(&stranger.cert, Some(&agent)).post(&url).body(format!("mtls_http value=4 {t}")).send().await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    // `runnel send` over mutual TLS: with the agent's certificate it gets through; without, it fails.
    let csv = dir.join("cli.csv");
    std::fs::write(&csv, format!("timestamp,value\n{},5\n", t / S)).unwrap();
    let runnel = |tls: &[&str]| {
        std::process::Command::new(e2e::process::bin("runnel"))
            .args(["--collector", &format!("https://localhost:{}", grpc.port())])
            .args(tls)
            .args(["send", csv.to_str().unwrap(), "--metric", "mtls_cli"])
            .output()
            .unwrap()
    };
    let ca_arg = ca_file.to_str().unwrap();
    let out = runnel(&["--ca-cert", ca_arg, "--client-cert", agent.cert.to_str().unwrap(), "--client-key", agent.key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = runnel(&["--ca-cert", ca_arg]);
    assert!(!out.status.success(), "without a client certificate: {}", String::from_utf8_lossy(&out.stdout));
    mutual.stop().await;

    // TLS without client certificates: any client that trusts the CA writes.
    let mut s = settings(points_topic);
    s.tls = Some(TlsSettings { cert: server.cert.clone(), key: server.key.clone(), client_ca: None });
    let (http, grpc, one_way) = start_with(s).await;
    assert_eq!(grpc_write(format!("https://{grpc}"), Some(trust), point("tls_grpc", &[], t, 1.0)).await, Ok(1));
    let reply = https_client(&ca_file, None).post(format!("https://{http}/api/v2/write")).body(format!("tls_http value=1 {t}")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    one_way.stop().await;

    assert_eq!(message_count(&kafka(), &name), 5, "one point per accepted write, nothing from the refused ones");
    assert_eq!(
        points_in(&name, 5),
        sorted(vec![
            point("mtls_grpc", &[], t, 1.0),
            point("mtls_http", &[], t, 1.0),
            point("mtls_cli", &[], t, 5.0),
            point("tls_grpc", &[], t, 1.0),
            point("tls_http", &[], t, 1.0),
        ])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
