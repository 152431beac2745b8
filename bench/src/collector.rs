//! `runnel-bench collector`: points per second accepted (acknowledged by Kafka) through the collector's
//! gRPC batches, gRPC streaming (`WriteAcked`) and HTTP line protocol, beside a bare rdkafka producer
//! sending the same points with the collector's own producer settings (acks=all, idempotent, lz4,
//! linger 5 ms), each run into a fresh topic, rounds alternated. Then each protocol again, paced at half
//! its own maximum rate, for the time from a request's due moment to its acknowledgement.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes};
use futures::StreamExt as _;
use plumbing::kafka::{KafkaSettings, TopicSettings};
use proto::prost::Message as _;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use proto::tonic::codegen::http::uri::PathAndQuery;
use proto::tonic::{Request, Status};
use proto::v1::{Point, WriteAck, WriteRequest, WriteResponse};
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

/// The gRPC paths of the collector's `Write` and `WriteAcked`.
const WRITE: &str = "/runnel.v1.IngestService/Write";
const WRITE_ACKED: &str = "/runnel.v1.IngestService/WriteAcked";

#[derive(Debug, Clone, Copy)]
enum Protocol {
    GrpcBatches,
    GrpcStream,
    HttpLines,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::GrpcBatches => "gRPC `Write` batches",
            Self::GrpcStream => "gRPC `WriteAcked` stream",
            Self::HttpLines => "HTTP line protocol (`/api/v2/write`)",
        }
    }
}

/// A gRPC codec that sends messages encoded in advance, as the bare producer sends payloads encoded in
/// advance, and decodes the answers (`R`) with prost: the clients cost what the transport costs, not
/// protobuf encoding, which a real client does on its own machine.
struct Preencoded<R>(PhantomData<R>);

impl<R> Default for Preencoded<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: proto::prost::Message + Default + Send + 'static> Codec for Preencoded<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self::default()
    }

    fn decoder(&mut self) -> Self {
        Self::default()
    }
}

impl<R> Encoder for Preencoded<R> {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<R: proto::prost::Message + Default> Decoder for Preencoded<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src).map(Some).map_err(|e| Status::internal(format!("an answer that is not protobuf: {e}")))
    }
}

/// A gRPC client of the collector's channel that sends pre-encoded requests.
async fn raw_client(url: String) -> anyhow::Result<proto::tonic::client::Grpc<proto::tonic::transport::Channel>> {
    let channel = proto::tonic::transport::Endpoint::from_shared(url)?.connect().await?;
    let mut grpc = proto::tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    Ok(grpc)
}

/// When request `i` (of all clients' requests, in order) is due: at once, or at an even pace.
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: tokio::time::Instant,
    every: Option<Duration>,
}

impl Pace {
    fn due(self, i: usize) -> tokio::time::Instant {
        match self.every {
            None => self.start,
            Some(every) => self.start + every.mul_f64(i as f64),
        }
    }
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
            let (run, _) = through_collector(kafka, o, protocol, &batches, &bodies, None).await?;
            eprintln!("round {round}: {protocol:?} {:.0} points/s", run.rate());
            runs.push(run);
        }
    }
    let b = median(bare.iter().map(Run::rate).collect());
    let mut latency = String::from(
        "| protocol | paced at points/s | requests | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
    );
    for (protocol, runs) in [(Protocol::GrpcBatches, &grpc), (Protocol::GrpcStream, &stream), (Protocol::HttpLines, &http)] {
        let half = median(runs.iter().map(Run::rate).collect()) / 2.0;
        let (_, mut took) = through_collector(kafka, o, protocol, &batches, &bodies, Some(half)).await?;
        took.sort();
        let ms = |q: f64| took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1)).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        eprintln!("{protocol:?} at {half:.0} points/s: p99 {:.1} ms", ms(0.99));
        latency.push_str(&format!("| {} | {half:.0} | {} | {:.1} | {:.1} | {:.1} |\n", protocol.name(), took.len(), ms(0.5), ms(0.99), ms(1.0)));
    }
    let mut out = format!(
        "{}\n\n{} points over {} series, {} points a request, {} clients at once, {} partitions. Each round a bare \
         rdkafka producer (the collector's settings: acks=all, idempotent, lz4, linger 5 ms; one thread) sends the \
         points, keyed and encoded as the collector writes them before its clock starts, then a collector in this process takes them from {} concurrent \
         clients over each protocol in turn, each request encoded in advance (protobuf for gRPC, text for \
         line protocol), as the baseline's payloads are; every run writes a fresh topic and ends when every point is \
         acknowledged (the collector answers only then), checked by the topic's offsets. The collector's \
         in-flight limit is raised to hold every stream's {} messages at once ({} points). The collector runs in this process \
         with its binary's allocator (mimalloc). CPU is the whole process's (clients included), per million points. Median of {} rounds.\n\n",
        crate::machine(),
        o.points,
        o.series,
        o.batch,
        o.clients,
        o.partitions,
        o.clients,
        collector::ACKED_IN_FLIGHT,
        (o.clients * collector::ACKED_IN_FLIGHT * o.batch).max(collector::config::Limits::default().max_in_flight_points),
        o.rounds
    );
    out.push_str(&HEADER.replace("records/s", "points/s"));
    out.push_str(&row("bare rdkafka producer (baseline)", &bare, b));
    out.push_str(&row(&format!("collector, {}", Protocol::GrpcBatches.name()), &grpc, b));
    out.push_str(&row(&format!("collector, {}", Protocol::GrpcStream.name()), &stream, b));
    out.push_str(&row(&format!("collector, {}", Protocol::HttpLines.name()), &http, b));
    out.push_str(&format!(
        "\nLatency at half the maximum rate: each protocol again, its requests due at an even pace that makes half \
         its median rate above, spread over the same {} clients. A request's time runs from the moment it was due \
         (not when a busy client got to send it, so a stall is counted in full) to its acknowledgement.\n\n",
        o.clients
    ));
    out.push_str(&latency);
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
        // The same keys and payloads the collector writes, encoded before the clock starts: the
        // baseline is Kafka's cost alone.
        let encoded: Vec<(String, Vec<u8>)> = points.iter().map(|p| (p.series_key(), p.encode_to_vec())).collect();
        let (started, cpu) = (Instant::now(), cpu_seconds());
        for (key, payload) in &encoded {
            send(&producer, &topic.name, key.as_bytes(), payload)?;
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(300))?;
        let run = Run { seconds: started.elapsed().as_secs_f64(), records: points.len() as u64, cpu: cpu_seconds() - cpu };
        check_count(&kafka, &topic.name, run.records)?;
        Ok(run)
    })
    .await?
}

/// Sends the batches (or line-protocol bodies) through a fresh collector from `o.clients` clients, each
/// taking every `o.clients`-th request; at once, or paced at `paced` points a second. Returns the run and,
/// when paced, each request's time from its due moment to its acknowledgement.
async fn through_collector(
    kafka: &KafkaSettings,
    o: &Options,
    protocol: Protocol,
    batches: &[WriteRequest],
    bodies: &[String],
    paced: Option<f64>,
) -> anyhow::Result<(Run, Vec<Duration>)> {
    let topic = fresh_topic(kafka, o).await?;
    let mut settings = collector::Settings { kafka: kafka.clone(), ..Default::default() };
    settings.grpc.listen = "127.0.0.1:0".parse()?;
    settings.ops.listen = "127.0.0.1:0".parse()?;
    settings.http.listen = "127.0.0.1:0".parse()?;
    settings.topics.points = topic.clone();
    settings.limits.max_batch_points = settings.limits.max_batch_points.max(o.batch);
    // Room for every stream's window of messages at once, so that a run measures throughput and not
    // the (correct) refusal of a client past the in-flight limit, which the bench does not retry.
    settings.limits.max_in_flight_points = settings.limits.max_in_flight_points.max(o.clients * collector::ACKED_IN_FLIGHT * o.batch);
    let app = collector::App::build(settings).await?;
    let (grpc, http) = (format!("http://{}", app.grpc_addr()), format!("http://{}", app.http_addr()));
    let shutdown = plumbing::Shutdown::new();
    let serving = tokio::spawn(app.run(shutdown.clone()));

    // A paced run measures latency, not a fresh topic's first metadata lookup or a client's connecting:
    // its first request goes alone, unmeasured, and the pace starts a moment after the clients are made.
    let first = match paced {
        Some(_) => {
            IngestServiceClient::connect(grpc.clone()).await?.write(batches[0].clone()).await.context("the warm-up write")?;
            1
        }
        None => 0,
    };
    // Each client's share, request i (counted from `first`) due at pace.due(i); copied before the clock
    // starts, so that the copying is not counted as the collector's time.
    let shares: Vec<(Vec<(usize, Bytes)>, Vec<(usize, String)>)> = (0..o.clients)
        .map(|c| {
            let mine = match protocol {
                Protocol::GrpcBatches | Protocol::GrpcStream => {
                    batches[first..].iter().enumerate().skip(c).step_by(o.clients).map(|(i, b)| (i, Bytes::from(b.encode_to_vec()))).collect()
                }
                Protocol::HttpLines => Vec::new(),
            };
            let my_bodies = match protocol {
                Protocol::HttpLines => bodies[first..].iter().cloned().enumerate().skip(c).step_by(o.clients).collect(),
                Protocol::GrpcBatches | Protocol::GrpcStream => Vec::new(),
            };
            (mine, my_bodies)
        })
        .collect();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let pace = Pace {
        start: tokio::time::Instant::now() + Duration::from_millis(if paced.is_some() { 100 } else { 0 }),
        every: paced.map(|rate| Duration::from_secs_f64(o.batch as f64 / rate)),
    };
    let clients: Vec<_> = shares
        .into_iter()
        .map(|(mine, my_bodies)| {
            let (grpc, http) = (grpc.clone(), http.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                match protocol {
                    Protocol::GrpcBatches => {
                        let mut client = raw_client(grpc).await?;
                        for (i, batch) in mine {
                            tokio::time::sleep_until(pace.due(i)).await;
                            client.ready().await?;
                            let reply = client.unary(Request::new(batch), PathAndQuery::from_static(WRITE), Preencoded::<WriteResponse>::default());
                            reply.await.context("a gRPC write")?;
                            took.push(pace.due(i).elapsed());
                        }
                    }
                    Protocol::GrpcStream => {
                        let mut client = raw_client(grpc).await?;
                        let due: Vec<tokio::time::Instant> = mine.iter().map(|(i, _)| pace.due(*i)).collect();
                        let sent = mine.len();
                        let outgoing = futures::stream::iter(mine).then(move |(i, batch)| async move {
                            tokio::time::sleep_until(pace.due(i)).await;
                            batch
                        });
                        let acked = client.streaming(Request::new(outgoing), PathAndQuery::from_static(WRITE_ACKED), Preencoded::<WriteAck>::default());
                        let mut acks = acked.await?.into_inner();
                        while let Some(ack) = acks.next().await {
                            let ack = ack?;
                            if ack.code != 0 {
                                bail!("a streamed batch was refused: {}", ack.message);
                            }
                            // Acknowledgements come in the order the messages went.
                            took.push(due.get(took.len()).context("more acknowledgements than messages")?.elapsed());
                        }
                        if took.len() != sent {
                            bail!("{} of {sent} streamed batches acknowledged", took.len());
                        }
                    }
                    Protocol::HttpLines => {
                        let client = reqwest::Client::new();
                        for (i, body) in my_bodies {
                            tokio::time::sleep_until(pace.due(i)).await;
                            let reply = client.post(format!("{http}/api/v2/write")).body(body).send().await?;
                            if reply.status() != reqwest::StatusCode::NO_CONTENT {
                                bail!("an HTTP write answered {}: {}", reply.status(), reply.text().await.unwrap_or_default());
                            }
                            took.push(pace.due(i).elapsed());
                        }
                    }
                }
                Ok::<_, anyhow::Error>(took)
            })
        })
        .collect();
    let mut took = Vec::new();
    for client in clients {
        took.extend(client.await??);
    }
    let records = batches.iter().map(|b| b.points.len() as u64).sum();
    let run = Run { seconds: started.elapsed().as_secs_f64(), records, cpu: cpu_seconds() - cpu };
    shutdown.cancel();
    serving.await??;
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || check_count(&kafka, &topic.name, records)).await??;
    Ok((run, if paced.is_some() { took } else { Vec::new() }))
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
