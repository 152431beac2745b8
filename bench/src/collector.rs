//! `runnel-bench collector`: points per second accepted (acknowledged by Kafka) through the collector's
//! gRPC batches, gRPC streaming (`WriteAcked`) and HTTP line protocol, beside a bare rdkafka producer
//! sending the same points with the collector's own producer settings (acks=all, idempotent, lz4,
//! linger 5 ms), each run into a fresh topic, rounds alternated.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::{Point, WriteRequest};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::store::{HEADER, Run, cpu_seconds, median, row};
use crate::{S, now_ns, send, unique};

pub(crate) struct Options {
    pub(crate) points: u64,
    pub(crate) series: u64,
    pub(crate) batch: usize,
    pub(crate) clients: usize,
    pub(crate) partitions: i32,
    pub(crate) rounds: u32,
}

/// The load: series `i` gets one point a second, value `i + s`, over the recent past.
fn points(o: &Options) -> Vec<Point> {
    let base = (now_ns() - 3600 * S) / S * S;
    (0..o.points)
        .map(|n| {
            let (i, s) = (n % o.series, n / o.series);
            Point {
                metric: "bench".to_owned(),
                tags: [("series".to_owned(), i.to_string())].into(),
                timestamp_ns: base + i64::try_from(s).unwrap_or(0) * S,
                value: (i + s) as f64,
            }
        })
        .collect()
}

/// The same points as line-protocol bodies of `batch` lines.
fn line_protocol(points: &[Point], batch: usize) -> Vec<String> {
    points
        .chunks(batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|p| format!("{},series={} value={} {}\n", p.metric, p.tags["series"], p.value, p.timestamp_ns))
                .collect()
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    GrpcBatches,
    GrpcStream,
    HttpLines,
}

pub(crate) async fn collector_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    if o.clients == 0 || o.batch == 0 {
        bail!("--clients and --batch must be positive");
    }
    let points = points(o);
    let batches: Vec<WriteRequest> = points.chunks(o.batch).map(|c| WriteRequest { points: c.to_vec() }).collect();
    let bodies = line_protocol(&points, o.batch);
    let (mut bare, mut grpc, mut stream, mut http) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        let run = bare_producer(kafka, o, &points).await?;
        eprintln!("round {round}: bare producer {:.0} points/s", run.rate());
        bare.push(run);
        for (protocol, runs) in [(Protocol::GrpcBatches, &mut grpc), (Protocol::GrpcStream, &mut stream), (Protocol::HttpLines, &mut http)] {
            let run = through_collector(kafka, o, protocol, &batches, &bodies).await?;
            eprintln!("round {round}: {protocol:?} {:.0} points/s", run.rate());
            runs.push(run);
        }
    }
    let b = median(bare.iter().map(Run::rate).collect());
    let mut out = format!(
        "{}\n\n{} points over {} series, {} points a request, {} clients at once, {} partitions. Each round a bare \
         rdkafka producer (the collector's settings: acks=all, idempotent, lz4, linger 5 ms; one thread, encoding \
         each point as it goes) sends the points, then a collector in this process takes them from {} concurrent \
         clients over each protocol in turn; every run writes a fresh topic and ends when every point is \
         acknowledged (the collector answers only then), checked by the topic's offsets. CPU is the whole \
         process's (clients included), per million points. Median of {} rounds.\n\n",
        crate::machine(),
        o.points,
        o.series,
        o.batch,
        o.clients,
        o.partitions,
        o.clients,
        o.rounds
    );
    out.push_str(&HEADER.replace("records/s", "points/s"));
    out.push_str(&row("bare rdkafka producer (baseline)", &bare, b));
    out.push_str(&row("collector, gRPC `Write` batches", &grpc, b));
    out.push_str(&row("collector, gRPC `WriteAcked` stream", &stream, b));
    out.push_str(&row("collector, HTTP line protocol (`/api/v2/write`)", &http, b));
    Ok(out)
}

/// A fresh topic of the benchmark's shape.
async fn fresh_topic(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<TopicSettings> {
    let topic = TopicSettings { name: unique("bench-ingest"), partitions: o.partitions, replication_factor: 1 };
    kafka.ensure_topics(&[&topic]).await?;
    Ok(topic)
}

async fn bare_producer(kafka: &KafkaSettings, o: &Options, points: &[Point]) -> anyhow::Result<Run> {
    let topic = fresh_topic(kafka, o).await?;
    let kafka = kafka.clone();
    let points = points.to_vec();
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = kafka.producer_holding("bench-bare", 200_000).create()?;
        let (started, cpu) = (Instant::now(), cpu_seconds());
        for point in &points {
            let (key, payload) = (point.series_key(), point.encode_to_vec());
            send(&producer, &topic.name, key.as_bytes(), &payload)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(300))?;
        let run = Run { seconds: started.elapsed().as_secs_f64(), records: points.len() as u64, cpu: cpu_seconds() - cpu };
        check_count(&kafka, &topic.name, run.records)?;
        Ok(run)
    })
    .await?
}

async fn through_collector(kafka: &KafkaSettings, o: &Options, protocol: Protocol, batches: &[WriteRequest], bodies: &[String]) -> anyhow::Result<Run> {
    let topic = fresh_topic(kafka, o).await?;
    let mut settings = collector::Settings { kafka: kafka.clone(), ..Default::default() };
    settings.grpc.listen = "127.0.0.1:0".parse()?;
    settings.http.listen = "127.0.0.1:0".parse()?;
    settings.topics.points = topic.clone();
    settings.limits.max_batch_points = settings.limits.max_batch_points.max(o.batch);
    let app = collector::App::build(settings).await?;
    let (grpc, http) = (format!("http://{}", app.grpc_addr()), format!("http://{}", app.http_addr()));
    let shutdown = plumbing::Shutdown::new();
    let serving = tokio::spawn(app.run(shutdown.clone()));

    let (started, cpu) = (Instant::now(), cpu_seconds());
    let clients: Vec<_> = (0..o.clients)
        .map(|c| {
            let mine: Vec<WriteRequest> = batches.iter().skip(c).step_by(o.clients).cloned().collect();
            let my_bodies: Vec<String> = bodies.iter().skip(c).step_by(o.clients).cloned().collect();
            let (grpc, http) = (grpc.clone(), http.clone());
            tokio::spawn(async move {
                match protocol {
                    Protocol::GrpcBatches => {
                        let mut client = IngestServiceClient::connect(grpc).await?;
                        for batch in mine {
                            client.write(batch).await.context("a gRPC write")?;
                        }
                    }
                    Protocol::GrpcStream => {
                        let mut client = IngestServiceClient::connect(grpc).await?;
                        let sent = mine.len();
                        let mut acks = client.write_acked(futures::stream::iter(mine)).await?.into_inner();
                        let mut acked = 0;
                        while let Some(ack) = acks.next().await {
                            let ack = ack?;
                            if ack.code != 0 {
                                bail!("a streamed batch was refused: {}", ack.message);
                            }
                            acked += 1;
                        }
                        if acked != sent {
                            bail!("{acked} of {sent} streamed batches acknowledged");
                        }
                    }
                    Protocol::HttpLines => {
                        let client = reqwest::Client::new();
                        for body in my_bodies {
                            let reply = client.post(format!("{http}/api/v2/write")).body(body).send().await?;
                            if reply.status() != reqwest::StatusCode::NO_CONTENT {
                                bail!("an HTTP write answered {}: {}", reply.status(), reply.text().await.unwrap_or_default());
                            }
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let records = batches.iter().map(|b| b.points.len() as u64).sum();
    let run = Run { seconds: started.elapsed().as_secs_f64(), records, cpu: cpu_seconds() - cpu };
    shutdown.cancel();
    serving.await??;
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || check_count(&kafka, &topic.name, records)).await??;
    Ok(run)
}

/// Fails unless `topic` holds exactly `want` records (high minus low watermarks; no transactions).
fn check_count(kafka: &KafkaSettings, topic: &str, want: u64) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka.consumer("bench-count", &unique("bench-count")).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0i64;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        total += high - low;
    }
    if u64::try_from(total).ok() != Some(want) {
        bail!("{topic} holds {total} records, {want} were acknowledged");
    }
    Ok(())
}
