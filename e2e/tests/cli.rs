//! The `runnel` command line against a running pipeline, with golden output: SQL printed as a table
//! and as JSON, series and windows as JSON, `top` reading every service's metrics, completions, and
//! exit codes that tell a refused query (65) from an unreachable service (69). The data lie at a fixed
//! time, so every answer is known exactly.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::process::{Command, Output};
use std::time::Duration;

use e2e::oracle::{S, Topics, point, series};
use e2e::services::{collector_settings, processor_settings, store_settings, write};
use e2e::{Running, eventually, unique};

/// 2026-01-01T00:00:00Z.
const BASE: i64 = 1_767_225_600 * S;

fn runnel(args: &[&str]) -> Output {
    Command::new(e2e::process::bin("runnel")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "runnel failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_answers_with_golden_output_and_meaningful_exit_codes() {
    let topics = Topics::unique(1);
    let path = std::env::temp_dir().join(unique("runnel-cli-store"));
    let mut settings = store_settings(&topics, &unique("e2e-cli-store"), &path);
    // The data lie in January 2026: kept, not expired by retention.
    settings.storage.retention.points = None;
    settings.storage.retention.aggregates = None;
    let app = store::App::build(settings).await.unwrap();
    let (store, store_ops) = (format!("http://{}", app.grpc_addr()), app.ops_addr());
    let store_running = Running::spawn(|shutdown| app.run(shutdown));
    let mut settings = processor_settings(&topics, &unique("e2e-cli-processor"));
    settings.windows.idle_timeout = Duration::from_secs(3600);
    let app = processor::App::build(settings).await.unwrap();
    let processor_ops = app.ops_addr();
    let processor_running = Running::spawn(|shutdown| app.run(shutdown));
    let mut settings = collector_settings(&topics);
    // Points of January 2026 are older than the default week.
    settings.limits.max_age = Duration::from_secs(3 * 365 * 24 * 3600);
    let app = collector::App::build(settings).await.unwrap();
    let (collector, collector_ops) = (app.grpc_addr(), app.ops_addr());
    let collector_running = Running::spawn(|shutdown| app.run(shutdown));

    // Two series, a point a second for 20 s (a: i, b: 2i), then one point each at 60 s, which closes
    // the windows [0, 10) and [10, 20).
    let (a, b) = (series("cpu", &[("host", "a")]), series("cpu", &[("host", "b")]));
    let mut points = Vec::new();
    for i in 0..20 {
        points.push(point(&a, BASE + i * S, i as f64));
        points.push(point(&b, BASE + i * S, 2.0 * i as f64));
    }
    points.push(point(&a, BASE + 60 * S, 0.0));
    points.push(point(&b, BASE + 60 * S, 0.0));
    write(collector, &points).await;

    let count = ["--store", &store, "--json", "sql", "SELECT count(*) AS n FROM aggregates"];
    eventually("the four windows are stored", Duration::from_secs(60), || async {
        let output = runnel(&count);
        (output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == r#"[{"n":4}]"#).then_some(())
    })
    .await;

    let query = "SELECT series, start_ns, \"count\", sum, mean, min, max FROM aggregates ORDER BY series, start_ns";
    let table = stdout(&runnel(&["--store", &store, "sql", query]));
    let golden_table = r#"+---------------+---------------------+-------+-------+------+------+------+
| series        | start_ns            | count | sum   | mean | min  | max  |
+---------------+---------------------+-------+-------+------+------+------+
| cpu{host="a"} | 1767225600000000000 | 10    | 45.0  | 4.5  | 0.0  | 9.0  |
| cpu{host="a"} | 1767225610000000000 | 10    | 145.0 | 14.5 | 10.0 | 19.0 |
| cpu{host="b"} | 1767225600000000000 | 10    | 90.0  | 9.0  | 0.0  | 18.0 |
| cpu{host="b"} | 1767225610000000000 | 10    | 290.0 | 29.0 | 20.0 | 38.0 |
+---------------+---------------------+-------+-------+------+------+------+
"#;
    assert_eq!(table, golden_table);

    let json = stdout(&runnel(&["--store", &store, "--json", "sql", "SELECT series, sum FROM aggregates ORDER BY series, start_ns"]));
    let golden_json = r#"[{"series":"cpu{host=\"a\"}","sum":45.0},{"series":"cpu{host=\"a\"}","sum":145.0},{"series":"cpu{host=\"b\"}","sum":90.0},{"series":"cpu{host=\"b\"}","sum":290.0}]
"#;
    assert_eq!(json, golden_json);

    let listed = stdout(&runnel(&["--store", &store, "series", "cpu"]));
    assert_eq!(listed, "cpu{host=\"a\"}\ncpu{host=\"b\"}\n");
    let listed = stdout(&runnel(&["--store", &store, "--json", "series", "cpu"]));
    assert_eq!(listed, "[{\"metric\":\"cpu\",\"tags\":{\"host\":\"a\"}},{\"metric\":\"cpu\",\"tags\":{\"host\":\"b\"}}]\n");

    // A range reaching back to January, as JSON: the last window of host a.
    let windows = stdout(&runnel(&["--store", &store, "--json", "range", "cpu", "--tag", "host=a", "--since", "9000h", "--last", "1"]));
    let parsed: serde_json::Value = serde_json::from_str(&windows).unwrap();
    let window = &parsed[0]["windows"][0];
    assert_eq!(parsed[0]["series"], serde_json::json!({ "metric": "cpu", "tags": { "host": "a" } }));
    assert_eq!(window["start"], "2026-01-01T00:00:10Z");
    assert_eq!((window["count"].as_u64(), window["sum"].as_f64(), window["max"].as_f64()), (Some(10), Some(145.0), Some(19.0)));

    // Exit codes: a query the store refuses, an unreachable store, a usage error.
    let refused = runnel(&["--store", &store, "sql", "SELECT nonsense FROM aggregates"]);
    assert_eq!(refused.status.code(), Some(65), "{}", String::from_utf8_lossy(&refused.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = runnel(&["--store", &format!("http://{closed}"), "series"]);
    assert_eq!(unreachable.status.code(), Some(69), "{}", String::from_utf8_lossy(&unreachable.stderr));
    assert_eq!(runnel(&["sql"]).status.code(), Some(2));

    // `top` reads the services' metrics: the processor merged every point and is ready.
    let ops = [
        format!("collector={collector_ops}"),
        format!("processor={processor_ops}"),
        format!("store={store_ops}"),
        format!("unreachable={closed}"),
    ];
    let mut args = vec!["--json", "top", "--once", "--interval", "200ms"];
    for op in &ops {
        args.extend(["--ops", op.as_str()]);
    }
    let rows: serde_json::Value = serde_json::from_str(&stdout(&runnel(&args))).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["service"].as_str().unwrap()).collect::<Vec<_>>(), ["collector", "processor", "store", "unreachable"]);
    assert!(rows[..3].iter().all(|r| r["ready"] == true && r["error"].is_null()), "{rows:#?}");
    assert!(rows[3]["error"].as_str().unwrap().starts_with("unreachable"), "{rows:#?}");
    let text = stdout(&runnel(&args[1..]));
    assert!(text.starts_with("SERVICE    ADDRESS               READY    CPU    MEMORY  ACTIVITY\ncollector  "), "{text}");
    assert!(text.contains(" yes "), "{text}");

    // Completions for the shells people use.
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&runnel(&["completions", shell]));
        assert!(script.contains("runnel") && script.contains("sql") && script.contains("top"), "{shell}");
    }

    collector_running.stop().await;
    processor_running.stop().await;
    store_running.stop().await;
    std::fs::remove_dir_all(&path).unwrap();
}
