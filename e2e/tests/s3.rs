//! The store on an S3-compatible object store (moto's server, a reimplementation of the S3 API, on
//! loopback): conditional writes fence a second writer of a manifest version, and two store processes
//! sharing one bucket answer alike, and one takes the other's partitions over after a SIGKILL with
//! every window listed exactly once.
//!
//! `deploy/test.sh` installs moto into `.cache/s3-venv` and names its server in `RUNNEL_MOTO_SERVER`.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use e2e::oracle::{S, Topics, WINDOW};
use e2e::process::Service;
use e2e::services::{range_of, spawn_store_with, start_event_time_processor};
use e2e::stored::stored_in;
use e2e::verify::{FormulaData, Options, compare};
use e2e::{eventually, kafka, now_ns, produce_points, unique};
use store::Kind;
use store::manifest::Manifest;
use store::objects::{Objects, ObjectsError};

/// A moto S3 server on a port of its own, with one bucket.
struct S3 {
    _server: Service,
    endpoint: String,
    bucket: String,
}

impl S3 {
    fn start() -> Self {
        let binary = std::env::var("RUNNEL_MOTO_SERVER")
            .expect("RUNNEL_MOTO_SERVER is not set: this test needs an S3-compatible server; run `deploy/test.sh`, which installs one");
        let mut server = Service::spawn_with_args(std::path::Path::new(&binary), &["-H", "127.0.0.1", "-p", "0"], &[]);
        let line = server.wait_for_log("Running on http://", Duration::from_secs(60));
        let endpoint = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches('/').to_owned();
        let bucket = unique("runnel-e2e").to_lowercase().replace('_', "-");
        // Creating a bucket is one unsigned PUT; moto does not check signatures.
        let host = endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "bucket {bucket} not created: {reply}");
        Self { _server: server, endpoint, bucket }
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "runnel"),
            ("aws_secret_access_key", "runnel"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The environment that points a store process at `prefix` of the bucket.
    fn store_env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut env = vec![("RUNNEL_STORE__STORAGE__URL".to_owned(), self.url(prefix))];
        env.extend(self.options().into_iter().map(|(k, v)| (format!("RUNNEL_STORE__STORAGE__OPTIONS__{}", k.to_uppercase()), v)));
        env
    }
}

#[tokio::test]
async fn a_manifest_version_is_published_once_on_s3() {
    let s3 = S3::start();
    let objects = Objects::s3(&s3.url("fencing"), &s3.options()).unwrap();
    let manifest = Manifest { version: 1, ..Manifest::default() };
    objects.publish_manifest("aggregates", "t", 0, &manifest).await.unwrap();
    let again = objects.publish_manifest("aggregates", "t", 0, &manifest).await;
    assert!(matches!(again, Err(ObjectsError::Fenced { version: 1, .. })), "{again:?}");
    let read = objects.latest_manifest("aggregates", "t", 0).await.unwrap();
    assert_eq!(read.version, 1);
    // The prefix keeps stores apart in one bucket.
    let other = Objects::s3(&s3.url("elsewhere"), &s3.options()).unwrap();
    assert_eq!(other.latest_manifest("aggregates", "t", 0).await.unwrap().version, 0);
    let bad = Objects::s3("s3://", &s3.options());
    assert!(bad.is_err(), "a URL without a bucket is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_bucket_and_one_takes_over() {
    let s3 = S3::start();
    let topics = Topics::unique(4);
    kafka().ensure_topics(&[&topics.points, &topics.aggregates, &topics.alerts, &topics.deadletter]).await.unwrap();
    let dir = std::env::temp_dir().join(unique("runnel-s3-e2e"));
    std::fs::create_dir_all(&dir).unwrap();
    let processor = start_event_time_processor(&topics).await;
    let group = unique("e2e-s3-store");
    let env = s3.store_env("pipeline");
    let more: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // The folder is unused: the URL takes its place.
    let unused = dir.join("unused");
    let (mut a, addr_a) = spawn_store_with(&dir, &topics, &group, &unused, "a", &more);
    let (b, addr_b) = spawn_store_with(&dir, &topics, &group, &unused, "b", &more);
    let produce = |data: FormulaData, rate: u64| {
        let topic = topics.points.name.clone();
        tokio::task::spawn_blocking(move || produce_points(&kafka(), data.points(), &topic, rate))
    };

    let base = (now_ns() - 3 * 3600 * S) / WINDOW * WINDOW;
    let first = FormulaData::new(base, 100, 60, 7);
    produce(first, 20_000).await.unwrap();
    let want = first.expected();
    for addr in [addr_a, addr_b] {
        eventually("both stores to answer every window from the bucket", Duration::from_secs(90), || async {
            compare(&range_of(addr, &first).await, &want, Options::default()).is_clean().then_some(())
        })
        .await;
    }
    assert_eq!(range_of(addr_a, &first).await, range_of(addr_b, &first).await);

    // a is SIGKILLed while a second load flows; b takes its partitions over from their manifests.
    let second = FormulaData::new(base + 600 * S, 100, 60, 9);
    let producing = produce(second, 4_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!a.kill().success());
    producing.await.unwrap();
    let want_second = second.expected();
    eventually("the surviving store to answer the second load", Duration::from_secs(90), || async {
        compare(&range_of(addr_b, &second).await, &want_second, Options::default()).is_clean().then_some(())
    })
    .await;
    let objects = Objects::s3(&s3.url("pipeline"), &s3.options()).unwrap();
    let mut want_all = want;
    want_all.extend(want_second);
    let got = eventually("every window of both loads to be listed", Duration::from_secs(60), || async {
        let got = stored_in(&objects, Kind::Aggregates, &topics.aggregates.name, 4).await;
        // The first load's closing windows (one per series) are listed too, and not expected.
        (got.reading.aggregates.len() >= want_all.len() + 100).then_some(got)
    })
    .await;
    let listed: e2e::verify::Reading = e2e::verify::Reading {
        aggregates: got.reading.aggregates.into_iter().filter(|o| want_all.contains_key(&o.key)).collect(),
        ..Default::default()
    };
    let verdict = compare(&listed, &want_all, Options::default());
    assert!(verdict.is_clean(), "{verdict}\nb's log:\n{}", b.log_tail(40));
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);
    drop((a, b));
    processor.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
