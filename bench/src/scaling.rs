//! `runnel-bench scaling`: how the processor's throughput, CPU per point and memory grow with the
//! number of series (1,000 to 1,000,000 by default), and with 1, 2 and 4 instances in one group on the
//! same partitions. Each configuration: the instances start on an empty topic and settle their
//! assignment; then a bare producer loads the points (one per series per second of event time, then a
//! point a minute later on every partition), and the clock runs from the load's start until the
//! instances together have handled every point and emitted every window. CPU and memory are the
//! instances' processes' own (/proc), summed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use plumbing::kafka::{KafkaSettings, TopicSettings};

use crate::pipeline::spawn_processor;
use crate::process::Service;
use crate::unique;

pub(crate) struct Options {
    pub(crate) points: u64,
    pub(crate) scales: Vec<u64>,
    /// Series of the instances' runs.
    pub(crate) series: u64,
    pub(crate) instances: Vec<usize>,
    pub(crate) partitions: i32,
}

struct Measured {
    seconds: f64,
    cpu: f64,
    peak_mib: f64,
}

/// One configuration: `instances` processors over `points` points of `series` series.
async fn measure(kafka: &KafkaSettings, dir: &Path, points: u64, series: u64, instances: usize, partitions: i32) -> anyhow::Result<Measured> {
    let topic = |name: &str| TopicSettings { name: unique(name), partitions, replication_factor: 1 };
    let (input, aggregates, deadletter) = (topic("bench-scaling-in"), topic("bench-scaling-out"), topic("bench-scaling-deadletter"));
    kafka.ensure_topics(&[&input, &aggregates, &deadletter]).await?;
    // One group, a transactional id each (spawn_processor makes both unique: the group is set here).
    let group = ("RUNNEL_PROCESSOR__GROUP_ID", unique("bench-scaling"));
    let mut running = Vec::new();
    for _ in 0..instances {
        running.push(spawn_processor(kafka, dir, &input, &aggregates, &deadletter, std::slice::from_ref(&group))?);
    }
    for service in &mut running {
        service.ready().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sum(&running, "runnel_processor_assigned_partitions").await < f64::from(partitions) {
        if Instant::now() > deadline {
            bail!("{instances} processors did not settle their assignment of {partitions} partitions in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_before: f64 = running.iter().map(Service::cpu).sum();
    let started = Instant::now();
    let loading = {
        let (kafka, input) = (kafka.clone(), input.clone());
        tokio::task::spawn_blocking(move || crate::peers::load_input(&kafka, &input, points, series))
    };
    let windows = (series * (points / series).div_ceil(10)) as f64;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let handled = sum(&running, "runnel_processor_points_total").await + sum(&running, "runnel_processor_late_points_total").await;
        let emitted = sum(&running, "runnel_processor_windows_emitted_total").await;
        // Every point, plus the sentinels (one a partition), and every window.
        if handled >= (points + u64::try_from(partitions)?) as f64 && emitted >= windows {
            break;
        }
        if Instant::now() > deadline {
            bail!("{instances} processors handled {handled} of {points} points and emitted {emitted} of {windows} windows in 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    loading.await??;
    let cpu = running.iter().map(Service::cpu).sum::<f64>() - cpu_before;
    let peak_mib = running.iter().map(|s| s.process.memory_mib().1).sum();
    for service in running {
        service.stop()?;
    }
    Ok(Measured { seconds, cpu, peak_mib })
}

/// The sum of a sample over the instances.
async fn sum(running: &[Service], series: &str) -> f64 {
    let mut total = 0.0;
    for service in running {
        total += service.metric(series).await.unwrap_or(0.0);
    }
    total
}

pub(crate) async fn scaling_bench(kafka: &KafkaSettings, o: &Options) -> anyhow::Result<String> {
    for scale in o.scales.iter().chain([&o.series]) {
        if *scale == 0 || !o.points.is_multiple_of(*scale) {
            bail!("--points must be a multiple of every series count");
        }
    }
    let dir = std::env::temp_dir().join(unique("runnel-bench-scaling"));
    std::fs::create_dir_all(&dir)?;
    let mut out = format!(
        "{}\n\nEach configuration: the processor instances (release binaries, default settings: 10 s tumbling windows, \
         exactly once, 1 s commits) start in one group on an empty topic of {} partitions and settle their assignment; then a bare \
         producer loads {} points (one per series per second of event time, then a point a minute later on every \
         partition so that every window closes), and the clock runs from the load's start until the instances together \
         have handled every point and emitted every window. CPU is the instances' own (user and system, from /proc), \
         summed; so is their peak resident memory.\n\n\
         | series | points per series | points/s | CPU µs per point | peak resident MiB | bytes per series |\n|---|---|---|---|---|---|\n",
        crate::machine(),
        o.partitions,
        o.points
    );
    for &series in &o.scales {
        let m = measure(kafka, &dir, o.points, series, 1, o.partitions).await?;
        eprintln!("scaling: {series} series, {:.0} points/s, peak {:.0} MiB", o.points as f64 / m.seconds, m.peak_mib);
        out.push_str(&format!(
            "| {series} | {} | {:.0} | {:.2} | {:.0} | {:.0} |\n",
            o.points / series,
            o.points as f64 / m.seconds,
            m.cpu / o.points as f64 * 1e6,
            m.peak_mib,
            m.peak_mib * 1048576.0 / series as f64
        ));
    }
    out.push_str(&format!(
        "\nInstances on the same {} partitions, {} series (on this 2-core machine the point is the cost per instance, \
         not a linear speed-up):\n\n| instances | points/s | ratio to one | CPU µs per point | peak resident MiB, all instances |\n|---|---|---|---|---|\n",
        o.partitions, o.series
    ));
    let mut one = None;
    for &instances in &o.instances {
        let m = measure(kafka, &dir, o.points, o.series, instances, o.partitions).await?;
        let rate = o.points as f64 / m.seconds;
        eprintln!("scaling: {instances} instances, {rate:.0} points/s");
        let base = *one.get_or_insert(rate);
        out.push_str(&format!("| {instances} | {rate:.0} | {:.2} | {:.2} | {:.0} |\n", rate / base, m.cpu / o.points as f64 * 1e6, m.peak_mib));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(out)
}
