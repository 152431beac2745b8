//! `runnel backtest` and `runnel rules test`, run as a user runs them.

// Test helpers may panic: a failure is the test failing.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel")).args(args).output().expect("runnel runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A fresh folder for one test's files.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runnel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).display().to_string()
}

#[test]
fn the_shipped_rules_test_passes() {
    let out = runnel(&["rules", "test", &repo("deploy/local/rules-test.toml")]);
    assert!(out.status.success(), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).ends_with("ok: 5 alert changes, as expected\n"), "{}", stdout(&out));
}

#[test]
fn a_rules_test_that_expects_otherwise_fails_and_says_how() {
    let dir = folder("rules");
    let file = dir.join("test.toml");
    let body = "window = \"1m\"\n[[rules]]\nname = \"hot\"\nmetric = \"t\"\nop = \">\"\nthreshold = 1.0\n\
                [[series]]\nmetric = \"t\"\nvalues = \"0 2 0\"\n\
                [[alerts]]\nwindow = 2\nid = \"hot/t{}\"\nstate = \"firing\"\n";
    std::fs::write(&file, body).expect("write test");
    let out = runnel(&["rules", "test", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "window    1  FIRING    hot/t{}\nwindow    2  RESOLVED  hot/t{}\n\
         missing:    window 2 firing hot/t{}\n\
         unexpected: window 1 firing hot/t{}\nunexpected: window 2 resolved hot/t{}\n"
    );
    std::fs::write(&file, body.replace("op = \">\"\n", "")).expect("write test");
    let out = runnel(&["rules", "test", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rules[0].op: is required"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_backtest_prints_the_alerts_and_writes_a_score_per_row() {
    let dir = folder("backtest");
    let (csv, config, scores) = (dir.join("data.csv"), dir.join("analyzer.toml"), dir.join("scores.csv"));
    // 30 rows a minute apart: 10 until row 20, 50 from there on.
    let mut data = String::from("timestamp,value\n");
    for i in 0..30 {
        data.push_str(&format!("2026-01-01 00:{i:02}:00,{}\n", if i < 20 { 10 } else { 50 }));
    }
    std::fs::write(&csv, &data).expect("write csv");
    let settings = "[model.detector]\nkind = \"ewma\"\nalpha = 0.1\nwarmup = 10\n\n\
                    [[rules]]\nname = \"high\"\nmetric = \"load\"\nop = \">\"\nthreshold = 40.0\nfor = \"3m\"\n";
    std::fs::write(&config, settings).expect("write config");
    let args = ["backtest", &csv.display().to_string(), "--config", &config.display().to_string(), "--metric", "load", "--tag", "host=a"];
    let out = runnel(&[&args[..], &["--scores", &scores.display().to_string()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Above 40 from row 20 (00:20): pending at once, firing when 3 minutes have passed, at row 22.
    assert_eq!(
        stdout(&out),
        "PENDING   high/load{host=\"a\"} value 50.000 threshold 40 window 2026-01-01T00:20:00Z\n\
         FIRING    high/load{host=\"a\"} value 50.000 threshold 40 window 2026-01-01T00:22:00Z\n"
    );
    let written = std::fs::read_to_string(&scores).expect("scores written");
    let rows: Vec<&str> = written.lines().collect();
    assert_eq!(rows.len(), 31);
    assert_eq!(rows[0], "timestamp,value,anomaly_score");
    for (i, row) in rows[1..].iter().enumerate() {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields[..2], data.lines().nth(i + 1).expect("row").split(',').collect::<Vec<_>>()[..]);
        let score: f64 = fields[2].parse().expect("a score");
        // The configured EWMA detector: 0 while warming up (10 rows) and on a constant series, 1 at the
        // jump from a series that never varied, then less as it learns the new level.
        match i {
            0..20 => assert_eq!(score, 0.0, "row {i}"),
            20 => assert_eq!(score, 1.0),
            _ => assert!((0.0..1.0).contains(&score), "row {i}: {score}"),
        }
    }
}
