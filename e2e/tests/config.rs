//! Bad configuration stops a service with a message naming the key; checked for each service's settings.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::collections::HashMap;
use std::io::Write as _;

use plumbing::config::{ServiceSettings, load};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn error_of<T: ServiceSettings + std::fmt::Debug>(service: &str, pairs: &[(&str, &str)]) -> String {
    load::<T>(service, None, env(pairs)).expect_err("settings must be refused").to_string()
}

#[test]
fn defaults_load_for_every_service() {
    load::<collector::Settings>("collector", None, env(&[])).unwrap();
    load::<processor::Settings>("processor", None, env(&[])).unwrap();
    load::<store::Settings>("store", None, env(&[])).unwrap();
    load::<analyzer::Settings>("analyzer", None, env(&[])).unwrap();
}

#[test]
fn an_unknown_key_is_named() {
    let err = error_of::<collector::Settings>("collector", &[("RUNNEL_COLLECTOR__GRPC__LISTNE", "1")]);
    assert!(err.contains("grpc") && err.contains("listne"), "{err}");
    let err = error_of::<processor::Settings>("processor", &[("RUNNEL_PROCESSOR__WINDOW__SIZE", "5s")]);
    assert!(err.contains("window"), "{err}");
}

#[test]
fn a_malformed_value_is_named_with_its_key() {
    let err = error_of::<collector::Settings>("collector", &[("RUNNEL_COLLECTOR__GRPC__LISTEN", "localhost")]);
    assert!(err.contains("grpc.listen"), "{err}");
    let err = error_of::<processor::Settings>("processor", &[("RUNNEL_PROCESSOR__WINDOWS__DEFAULT__SIZE", "ten seconds")]);
    assert!(err.contains("windows.default"), "{err}");
    let err = error_of::<store::Settings>("store", &[("RUNNEL_STORE__STORAGE__MAX_PENDING_ROWS", "0")]);
    assert!(err.contains("storage.max_pending_rows"), "{err}");
}

#[test]
fn invalid_values_are_all_reported() {
    let err = error_of::<processor::Settings>(
        "processor",
        &[("RUNNEL_PROCESSOR__WINDOWS__DEFAULT__SIZE", "0s"), ("RUNNEL_PROCESSOR__TOPICS__POINTS__PARTITIONS", "0")],
    );
    assert!(err.contains("windows.default.size: 0s must be between 1ms and a year"), "{err}");
    assert!(err.contains("topics.points.partitions: 0 must be at least 1"), "{err}");
}

#[test]
fn unsafe_kafka_options_are_refused() {
    let err = error_of::<collector::Settings>("collector", &[("RUNNEL_COLLECTOR__KAFKA__OPTIONS__ACKS", "1")]);
    assert!(err.contains("kafka.options.acks: may not be set"), "{err}");
}

#[test]
fn a_nested_key_keeps_its_siblings_defaults() {
    let s: processor::Settings =
        load("processor", None, env(&[("RUNNEL_PROCESSOR__TOPICS__POINTS__PARTITIONS", "12")])).unwrap();
    assert_eq!(s.topics.points.partitions, 12);
    assert_eq!(s.topics.points.name, "runnel.points.v1");
}

#[test]
fn kafka_brokers_overrides_every_service() {
    let s: store::Settings = load("store", None, env(&[("KAFKA_BROKERS", "10.9.9.9:9999")])).unwrap();
    assert_eq!(s.kafka.brokers, "10.9.9.9:9999");
}

#[test]
fn a_file_layer_is_read_and_checked() {
    let dir = std::env::temp_dir().join(e2e::unique("runnel-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("analyzer.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "[model]\nwindows = 5\n\n[[rules]]\nname = \"hot\"\nmetric = \"temp\"\nop = \">\"\nthreshold = 30.0").unwrap();
    let s: analyzer::Settings = load("analyzer", Some(&path), env(&[])).unwrap();
    assert_eq!((s.model.windows, s.rules.len()), (5, 1));

    std::fs::write(&path, "[[rules]]\nname = \"hot\"\nmetric = \"temp\"\nop = \"=>\"\nthreshold = 30.0\n").unwrap();
    let err = load::<analyzer::Settings>("analyzer", Some(&path), env(&[])).unwrap_err().to_string();
    assert!(err.contains("rules[0].op"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
