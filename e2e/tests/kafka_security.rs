//! Kafka security passed through `kafka.options`, against the broker's SASL_SSL listener
//! (`KAFKA_SASL_SSL_BROKERS`, its CA in `KAFKA_SASL_SSL_CA`; deploy/kafka.sh opens it and deploy/test.sh
//! sets both): a collector that authenticates with SASL PLAIN, and one with SCRAM-SHA-512, over TLS
//! verified against that CA, start and write a batch of points that reads back point for point over the
//! PLAINTEXT listener; a collector with a wrong password fails at startup with an authentication error,
//! and one that does not trust the broker's CA fails at startup with an SSL error.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{Running, kafka, message_count, now_ns, read_committed, topic};
use proto::prost::Message as _;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::{Point, WriteRequest};

/// The user deploy/kafka.sh defines on its SASL_SSL listener, for PLAIN and SCRAM-SHA-512 alike.
const USERNAME: &str = "runnel";
const PASSWORD: &str = "runnel-secret";

/// How long a collector may take to start or fail: a refusal shows within a second or two.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// The SASL_SSL listener's address and its CA's PEM file. A broker the user named with `KAFKA_BROKERS`
/// must come with both: a missing one fails the test rather than skip it.
fn sasl_ssl() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: this test needs the broker's SASL_SSL listener. deploy/test.sh sets \
                 KAFKA_SASL_SSL_BROKERS and KAFKA_SASL_SSL_CA when it starts the broker itself; with \
                 KAFKA_BROKERS naming a broker of your own, set KAFKA_SASL_SSL_BROKERS to the host:port of its \
                 SASL_SSL listener (SASL PLAIN and SCRAM-SHA-512, user {USERNAME}, password {PASSWORD}) and \
                 KAFKA_SASL_SSL_CA to the PEM file of the CA that signed its certificate"
            )
        })
    };
    (var("KAFKA_SASL_SSL_BROKERS"), var("KAFKA_SASL_SSL_CA"))
}

/// A collector on loopback port 0 that reaches the SASL_SSL listener with `options`.
fn settings(options: &[(&str, &str)]) -> collector::Settings {
    let (brokers, _) = sasl_ssl();
    let mut s = collector::Settings::default();
    s.kafka.brokers = brokers;
    s.kafka.options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.ops.listen = "127.0.0.1:0".parse().unwrap();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.topics.points = topic("sasl-points", 2);
    s.topics.deadletter = topic("sasl-deadletter", 1);
    s
}

/// What a client of the SASL_SSL listener sets: `mechanism`, the user, `password`, and the CA.
fn client_options<'a>(mechanism: &'a str, password: &'a str, ca: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", mechanism),
        ("sasl.username", USERNAME),
        ("sasl.password", password),
        ("ssl.ca.location", ca),
    ]
}

/// How `App::build` failed; panics if it did not within [`STARTUP_LIMIT`].
async fn startup_error(settings: collector::Settings) -> String {
    match tokio::time::timeout(STARTUP_LIMIT, collector::App::build(settings)).await {
        Err(_) => panic!("the collector neither started nor failed within {STARTUP_LIMIT:?}"),
        Ok(Ok(_)) => panic!("the collector started"),
        Ok(Err(err)) => err.to_string(),
    }
}

/// In series key, then time order: the order a comparison of two sets of points needs.
fn sorted(mut points: Vec<Point>) -> Vec<Point> {
    points.sort_by_key(|p| (p.series_key(), p.timestamp_ns));
    points
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_writes_through_sasl_ssl_and_every_point_reads_back() {
    let (_, ca) = sasl_ssl();
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let s = settings(&client_options(mechanism, PASSWORD, &ca));
        let name = s.topics.points.name.clone();
        let app = tokio::time::timeout(STARTUP_LIMIT, collector::App::build(s))
            .await
            .unwrap_or_else(|_| panic!("{mechanism}: the collector did not start within {STARTUP_LIMIT:?}"))
            .unwrap_or_else(|err| panic!("{mechanism}: the collector did not start: {err}"));
        let grpc = app.grpc_addr();
        let running = Running::spawn(|shutdown| app.run(shutdown));

        // 40 points over 8 series, each value unique: the batch is known by construction.
        let now = now_ns();
        let sent: Vec<Point> = (0..40)
            .map(|i| Point {
                metric: "sasl_probe".to_owned(),
                tags: BTreeMap::from([("host".to_owned(), format!("h{}", i % 8)), ("mechanism".to_owned(), mechanism.to_owned())]),
                timestamp_ns: now - i64::from(i) * 1_000_000,
                value: f64::from(i) + 0.25,
            })
            .collect();
        let mut client = IngestServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), client.write(WriteRequest { points: sent.clone() }))
            .await
            .unwrap_or_else(|_| panic!("{mechanism}: the write was not answered within 30 s"))
            .unwrap_or_else(|status| panic!("{mechanism}: write refused: {status:?}"));
        // Acknowledged only once Kafka acknowledged every point through the SASL_SSL listener.
        assert_eq!(reply.into_inner().accepted, 40, "{mechanism}");
        running.stop().await;

        // Read back over the PLAINTEXT listener: the same broker, another way in.
        let records = read_committed(&kafka(), &name, sent.len(), Duration::from_secs(30));
        let got: Vec<Point> = records.iter().map(|r| Point::decode(r.payload.as_slice()).unwrap()).collect();
        assert_eq!(sorted(got), sorted(sent), "{mechanism}");
        assert_eq!(message_count(&kafka(), &name), 40, "{mechanism}: no point written twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_collector_at_startup() {
    let (_, ca) = sasl_ssl();
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let err = startup_error(settings(&client_options(mechanism, "not-the-password", &ca))).await;
        // plumbing's access check turns librdkafka's error event into the startup error; its reason
        // ("Invalid username or password") goes to the log.
        assert!(err.contains("Authentication (Local: Authentication failure)"), "{mechanism}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_brokers_ca_fails_at_startup() {
    // The right credentials, but no ssl.ca.location: only the system's CAs, which never signed the
    // broker's certificate.
    let mut options = client_options("PLAIN", PASSWORD, "");
    options.retain(|(key, _)| *key != "ssl.ca.location");
    let err = startup_error(settings(&options)).await;
    // The reason ("certificate verify failed") goes to the log.
    assert!(err.contains("SSL (Local: SSL error)"), "{err}");
}
