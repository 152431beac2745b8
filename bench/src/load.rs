//! The load generator (`runnel-bench load`, and the load of the pipeline benchmark): points for a fleet
//! of series, sent to a collector through gRPC batches, gRPC streaming (`WriteAcked`) or HTTP line
//! protocol, at a set rate or as fast as the collector takes them, for a set time.
//!
//! Deterministic with a seed: request `i` holds points `i * batch ..` of the round-robin over the
//! series, and draws its values, and which of its points come out of order or late and by how much,
//! from a ChaCha stream of its own (`seed`, stream `i`), so the same seed sends the same requests
//! whichever client sends them. Event time is the moment a request is due (paced) or made (as fast as
//! possible): windows close in real time, as they do in production.
//!
//! A paced request's latency runs from the moment it was due, not from when a busy client got to it,
//! so a stall counts in full (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::{Point, WriteRequest};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

/// How points travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// Unary gRPC `Write`, one batch a request.
    Grpc,
    /// gRPC `WriteAcked`: one stream per client, a batch a message.
    Stream,
    /// HTTP line protocol (`/api/v2/write`), a batch a request.
    Lines,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Grpc => "gRPC `Write` batches",
            Self::Stream => "gRPC `WriteAcked` stream",
            Self::Lines => "HTTP line protocol",
        }
    }
}

/// What to send.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Spec {
    /// Points a second over all clients; 0 sends as fast as the collector acknowledges.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// How long to send.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Series, each a point in turn.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) series: u64,
    /// Tags per series (besides none: at least `host`).
    #[arg(long, default_value_t = 3)]
    pub(crate) tags: usize,
    /// The metric's name.
    #[arg(long, default_value = "load")]
    pub(crate) metric: String,
    /// Points per request (or per streamed message).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub(crate) clients: usize,
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub(crate) protocol: Protocol,
    /// The fraction of points whose event time lies up to `--disorder` before their request's.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) out_of_order: f64,
    /// How far back an out-of-order point goes, at most: within the processor's allowed lateness, it
    /// still counts in its window.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub(crate) disorder: Duration,
    /// The fraction of points that arrive `--late-by` behind their request: past any window's allowed
    /// lateness, so the processor dead-letters them as late.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) late: f64,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) late_by: Duration,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Draw a progress bar on a terminal.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) progress: bool,
}

impl Spec {
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.series == 0 || self.batch == 0 || self.clients == 0 {
            bail!("--series, --batch and --clients must be positive");
        }
        if !(0.0..=1.0).contains(&self.out_of_order) || !(0.0..=1.0).contains(&self.late) || self.out_of_order + self.late > 1.0 {
            bail!("--out-of-order and --late are fractions that add up to at most 1");
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            bail!("--rate must be 0 (as fast as possible) or a positive number of points a second");
        }
        Ok(())
    }

    /// The requests the run sends at most: all of a paced run; an unpaced run stops at its time.
    fn max_requests(&self) -> usize {
        if self.rate > 0.0 { (self.rate * self.duration.as_secs_f64() / self.batch as f64).ceil() as usize } else { usize::MAX }
    }

    /// When request `i` is due: at an even pace from `start`, or (unpaced) whenever a client gets to it.
    fn due(&self, start: Instant, i: usize) -> Option<Instant> {
        (self.rate > 0.0).then(|| start + Duration::from_secs_f64(i as f64 * self.batch as f64 / self.rate))
    }
}

/// The series and how each request's points are drawn.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    spec: Spec,
    /// Every series' tags, made once.
    tags: Vec<BTreeMap<String, String>>,
}

impl Generator {
    pub(crate) fn new(spec: Spec) -> Self {
        let tags = (0..spec.series)
            .map(|s| {
                let mut tags = BTreeMap::from([("host".to_owned(), format!("h{s}"))]);
                // Further tags of lower cardinality, as a fleet's region, rack and role are.
                for t in 1..spec.tags {
                    tags.insert(format!("t{t}"), format!("v{}", s % (10u64.pow(t.min(6) as u32))));
                }
                tags
            })
            .collect();
        Self { spec, tags }
    }

    /// Request `i`'s points, with event times around `now_ns`.
    pub(crate) fn request(&self, i: usize, now_ns: i64) -> Vec<Point> {
        let spec = &self.spec;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        rng.set_stream(i as u64);
        let first = i as u64 * spec.batch as u64;
        (first..first + spec.batch as u64)
            .map(|k| {
                let series = k % spec.series;
                let draw: f64 = rng.random();
                let timestamp_ns = if draw < spec.late {
                    now_ns - duration_ns(spec.late_by)
                } else if draw < spec.late + spec.out_of_order {
                    now_ns - rng.random_range(0..=duration_ns(spec.disorder))
                } else {
                    now_ns
                };
                // A level per series and a little noise around it.
                let value = (series % 100) as f64 + rng.random_range(-1.0..1.0);
                Point { metric: spec.metric.clone(), tags: self.tags[series as usize].clone(), timestamp_ns, value }
            })
            .collect()
    }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Points as line protocol, a line each.
pub(crate) fn line_protocol(points: &[Point]) -> String {
    let mut body = String::with_capacity(points.len() * 64);
    for p in points {
        body.push_str(&p.metric);
        for (name, value) in &p.tags {
            body.push(',');
            body.push_str(name);
            body.push('=');
            body.push_str(value);
        }
        body.push_str(&format!(" value={} {}\n", p.value, p.timestamp_ns));
    }
    body
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Report {
    pub(crate) requests: u64,
    pub(crate) points: u64,
    /// Points the collector accepted (written to Kafka).
    pub(crate) accepted: u64,
    pub(crate) seconds: f64,
    /// Each request's time to its acknowledgement: from when it was due when paced, from when it was
    /// sent otherwise.
    pub(crate) latencies: Vec<Duration>,
}

impl Report {
    pub(crate) fn rate(&self) -> f64 {
        self.accepted as f64 / self.seconds
    }

    /// The `q` quantile of the request latencies, in milliseconds.
    pub(crate) fn latency_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies, q)
    }
}

/// The `q` quantile (nearest rank) of `durations` in milliseconds; NaN when there are none.
pub(crate) fn quantile_ms(durations: &[Duration], q: f64) -> f64 {
    let mut sorted = durations.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(rank).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Where the collector listens.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) grpc: String,
    pub(crate) http: String,
}

/// Hands out request numbers to the clients until the run's time or its requests are over.
#[derive(Debug, Clone)]
struct Turns {
    next: Arc<AtomicUsize>,
    start: Instant,
    end: Instant,
    generator: Generator,
}

impl Turns {
    /// The next request and when it is due (paced), or None when the run is over.
    fn take(&self) -> Option<(usize, Option<Instant>)> {
        let spec = &self.generator.spec;
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let due = spec.due(self.start, i);
        (i < spec.max_requests() && due.unwrap_or_else(Instant::now) < self.end).then_some((i, due))
    }

    /// Waits until request `i` is due; returns the moment its latency counts from, and its points.
    async fn make(&self, i: usize, due: Option<Instant>) -> (Instant, Vec<Point>) {
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        (due.unwrap_or_else(Instant::now), self.generator.request(i, crate::now_ns()))
    }
}

/// Sends the load to `target` and returns what was acknowledged. A refused request fails the run, with
/// the collector's answer.
pub(crate) async fn run(target: &Target, generator: &Generator) -> anyhow::Result<Report> {
    let spec = generator.spec.clone();
    let progress = if spec.progress { ProgressBar::new(spec.duration.as_secs()) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {elapsed}/{len}s {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let turns = Turns { next: Arc::default(), start, end: start + spec.duration, generator: generator.clone() };
    let accepted = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..spec.clients)
        .map(|_| {
            let (target, turns, accepted) = (target.clone(), turns.clone(), accepted.clone());
            tokio::spawn(async move { client(target, turns, accepted).await })
        })
        .collect();
    let ticker = {
        let (progress, accepted) = (progress.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed().as_secs_f64();
                let points = accepted.load(Ordering::Relaxed);
                progress.set_position(elapsed as u64);
                progress.set_message(format!("{points} points, {:.0} points/s", points as f64 / elapsed.max(1e-3)));
            }
        })
    };
    let mut report = Report::default();
    for client in clients {
        let (requests, latencies) = client.await??;
        report.requests += requests;
        report.latencies.extend(latencies);
    }
    ticker.abort();
    report.seconds = start.elapsed().as_secs_f64();
    report.accepted = accepted.load(Ordering::Relaxed);
    report.points = report.requests * spec.batch as u64;
    progress.finish_and_clear();
    if report.accepted != report.points {
        bail!("{} of {} points accepted", report.accepted, report.points);
    }
    Ok(report)
}

/// One client: sends requests until the turns are over; returns how many and their latencies.
async fn client(target: Target, turns: Turns, accepted: Arc<AtomicU64>) -> anyhow::Result<(u64, Vec<Duration>)> {
    let mut latencies = Vec::new();
    match turns.generator.spec.protocol {
        Protocol::Grpc => {
            let mut client = IngestServiceClient::connect(target.grpc.clone()).await.context("connecting to the collector")?;
            while let Some((i, due)) = turns.take() {
                let (sent, points) = turns.make(i, due).await;
                let reply = client.write(WriteRequest { points }).await.context("a gRPC write")?.into_inner();
                latencies.push(sent.elapsed());
                accepted.fetch_add(reply.accepted, Ordering::Relaxed);
            }
        }
        Protocol::Stream => {
            let mut client = IngestServiceClient::connect(target.grpc.clone()).await.context("connecting to the collector")?;
            let (batches, stream) = tokio::sync::mpsc::channel::<WriteRequest>(16);
            // When each message's latency counts from, in the order sent: acks come in that order.
            let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let feeding = tokio::spawn(async move {
                while let Some((i, due)) = turns.take() {
                    let (sent, points) = turns.make(i, due).await;
                    if sent_tx.send(sent).is_err() || batches.send(WriteRequest { points }).await.is_err() {
                        break;
                    }
                }
            });
            let mut acks = client.write_acked(tokio_stream::wrappers::ReceiverStream::new(stream)).await?.into_inner();
            while let Some(ack) = acks.next().await {
                let ack = ack?;
                if ack.code != 0 {
                    bail!("a streamed batch was refused: {}", ack.message);
                }
                let sent = sent_rx.recv().await.context("an acknowledgement of a message not sent")?;
                latencies.push(sent.elapsed());
                accepted.fetch_add(ack.accepted, Ordering::Relaxed);
            }
            feeding.await?;
        }
        Protocol::Lines => {
            let http = reqwest::Client::new();
            let url = format!("{}/api/v2/write", target.http);
            while let Some((i, due)) = turns.take() {
                let (sent, points) = turns.make(i, due).await;
                let reply = http.post(&url).body(line_protocol(&points)).send().await?;
                if reply.status() != reqwest::StatusCode::NO_CONTENT {
                    bail!("an HTTP write answered {}: {}", reply.status(), reply.text().await.unwrap_or_default());
                }
                let taken = reply.headers().get("runnel-accepted-points").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
                latencies.push(sent.elapsed());
                accepted.fetch_add(taken, Ordering::Relaxed);
            }
        }
    }
    Ok((latencies.len() as u64, latencies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        spec: Spec,
    }

    fn spec(args: &[&str]) -> Spec {
        Args::parse_from(std::iter::once("load").chain(args.iter().copied())).spec
    }

    #[test]
    fn the_same_seed_makes_the_same_requests_and_fractions_hold() {
        let spec = spec(&["--series", "7", "--batch", "10000", "--out-of-order", "0.2", "--late", "0.1", "--tags", "3", "--seed", "42"]);
        let generator = Generator::new(spec.clone());
        let now = 1_000_000 * 1_000_000_000;
        let a = generator.request(3, now);
        assert_eq!(a, Generator::new(spec.clone()).request(3, now), "same seed, same request");
        assert_ne!(a, generator.request(4, now), "each request draws its own stream");
        let other_seed = Generator::new(Spec { seed: 43, ..spec.clone() }).request(3, now);
        assert_ne!(a, other_seed);
        // Round-robin over the series, from point 3 * 10000 on.
        for (k, p) in a.iter().enumerate() {
            assert_eq!(p.tags["host"], format!("h{}", (30_000 + k) % 7));
            assert_eq!(p.tags.len(), 3);
        }
        let late = a.iter().filter(|p| p.timestamp_ns == now - 300 * 1_000_000_000).count() as f64 / 10_000.0;
        let disordered = a.iter().filter(|p| p.timestamp_ns < now && p.timestamp_ns >= now - 500_000_000).count() as f64 / 10_000.0;
        let on_time = a.iter().filter(|p| p.timestamp_ns == now).count() as f64 / 10_000.0;
        // Binomial: 10,000 draws put each fraction within 0.02 of its mean (over 5 standard deviations).
        assert!((late - 0.1).abs() < 0.02, "late {late}");
        assert!((disordered - 0.2).abs() < 0.02, "out of order {disordered}");
        assert!((on_time - 0.7).abs() < 0.02, "on time {on_time}");
    }

    #[test]
    fn a_paced_run_is_due_evenly_and_bounded_by_its_time() {
        let spec = spec(&["--rate", "2000", "--batch", "100", "--duration", "3s"]);
        let start = Instant::now();
        assert_eq!(spec.max_requests(), 60);
        assert_eq!(spec.due(start, 20), Some(start + Duration::from_secs(1)));
        assert_eq!(spec.clone().due(start, 0), Some(start));
        let unpaced = Spec { rate: 0.0, ..spec };
        assert_eq!(unpaced.due(start, 20), None);
    }

    #[test]
    fn line_protocol_has_a_line_per_point() {
        let point = Point {
            metric: "load".into(),
            tags: [("host".to_owned(), "h1".to_owned()), ("t1".to_owned(), "v1".to_owned())].into(),
            timestamp_ns: 17,
            value: 2.5,
        };
        assert_eq!(line_protocol(&[point.clone(), point]), "load,host=h1,t1=v1 value=2.5 17\nload,host=h1,t1=v1 value=2.5 17\n");
    }
}
