//! The benchmark suite's short mode, so that it keeps working: `runnel-bench suite --short` runs every
//! benchmark of the standard suite small against the test broker (the services as the processes users
//! run, Kafka Streams and Quix Streams from `bench/peers/setup.sh`) and writes its sections. No figure
//! is judged; the suite itself fails when an engine's window results are not exactly the load's.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_short_suite_runs_every_benchmark_and_reports_it() {
    // The service binaries of this build, which the pipeline and the engines' runs start.
    let bin_dir = e2e::process::bin("collector").parent().unwrap().to_path_buf();
    for service in ["processor", "store", "analyzer"] {
        e2e::process::bin(service);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let report = std::env::temp_dir().join(e2e::unique("runnel-bench-short")).with_extension("md");
    let status = Command::new(env!("CARGO_BIN_EXE_runnel-bench"))
        .current_dir(root)
        .env("KAFKA_BROKERS", e2e::kafka().brokers)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--report")
        .arg(&report)
        .args(["suite", "--short"])
        .status()
        .unwrap();
    assert!(status.success(), "runnel-bench suite --short: {status}");
    let text = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "## Pipeline",
        "| bare rdkafka producer (baseline) |",
        "| collector acknowledged, pipeline running |",
        "| bare transactional passthrough (baseline) |",
        "| processor, exactly once |",
        "## Peer engines",
        "| Runnel processor |",
        "| Kafka Streams 4.4.0 |",
        "| Quix Streams 3.28.1 |",
        "## Scaling",
        "Reproduce: `deploy/bench.sh scaling",
    ] {
        assert!(text.contains(needle), "the report lacks {needle:?}:\n{text}");
    }
    std::fs::remove_file(&report).unwrap();
}
