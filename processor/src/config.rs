//! The processor's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plumbing::config::{FieldError, ServiceSettings, check};
use plumbing::kafka::{KafkaSettings, TopicSettings, topics};
use plumbing::ops::OpsSettings;
use plumbing::telemetry::TelemetrySettings;
use serde::{Deserialize, Serialize};

use crate::aggregate::SketchSpec;
use crate::window::{WindowKind, WindowRules};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    /// Consumer group; every processor instance of one pipeline shares it.
    pub group_id: String,
    pub topics: Topics,
    pub windows: Windows,
    /// How often a transaction (or, at least once, an offset commit) makes output and input progress
    /// durable: the work a crash repeats, and how often every changed open window is written to the
    /// changelog again. A closed window does not wait for it: it is committed once the input is drained,
    /// or after a twentieth of this at the most.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// `exactly-once`: aggregates and input offsets commit in one Kafka transaction. `at-least-once`:
    /// offsets commit after the aggregates are acknowledged, and a crash may emit a window twice.
    pub delivery: Delivery,
    /// Transactional id of this instance (exactly once): stable across its restarts, so that a restart
    /// fences its former self, and unique among the instances of the group. Defaults to
    /// `runnel-processor-<hostname>`.
    pub transactional_id: String,
    /// Deadline of every transactional call, and the broker's timeout for a transaction left open by a
    /// crashed instance (which holds back `read_committed` readers until then).
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    pub changelog: Changelog,
    pub telemetry: TelemetrySettings,
    /// The operations listener (`/livez`, `/readyz`, `/metrics`) and the drain deadline of a stop.
    pub ops: OpsSettings,
}

/// The changelog topic `<group_id>.changelog`, where every open window is checkpointed in the same
/// commit as the input offsets. The processor creates it compacted, with as many partitions as the points
/// topic (changelog partition p holds the windows of points partition p).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changelog {
    pub replication_factor: i32,
    /// Segment size of the topic: smaller segments are compacted sooner, so a restore reads less.
    pub segment_bytes: u64,
    /// How long a partition's new owner keeps trying to read its committed offsets and its changelog
    /// (a broker failing over leaves partitions without a leader for seconds) before the processor
    /// gives up and exits.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Settings {
    /// The changelog topic's name.
    pub fn changelog_topic(&self) -> String {
        format!("{}.changelog", self.group_id)
    }
}

/// How aggregates are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Input.
    pub points: TopicSettings,
    /// Output: one message per closed window and series.
    pub aggregates: TopicSettings,
    /// Output: late, malformed and far-future points, with their provenance.
    pub deadletter: TopicSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Windows {
    /// The windows of a metric that no rule names.
    pub default: WindowDef,
    /// Windows per metric: the first rule whose glob matches the metric name decides.
    #[serde(default)]
    pub rules: Vec<WindowRule>,
    /// How far behind its partition's newest event time a point may arrive and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// After this long (wall clock) without a point, a partition's event time advances with the wall
    /// clock, so its windows close even when its input has gone quiet.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Points further ahead of the processor's clock are dead-lettered, not merged: one bad clock must
    /// not move a partition's watermark and make everybody else's points late.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// The quantile sketch in every aggregate.
    pub sketch: Sketch,
    /// A TOML file of `default` and `[[rules]]` window definitions that replaces the two above, reloaded
    /// on SIGHUP and whenever its content changes: points read after a reload go to windows of the
    /// new definitions, while windows already open close as they were defined, with their points.
    /// A file that is invalid is refused with a log line, and the running definitions stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// How often `file` is checked for a change.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// The windows file: what `windows.default` and `windows.rules` say in the settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsFile {
    default: WindowDef,
    #[serde(default)]
    rules: Vec<WindowRule>,
}

/// The window definitions of `file`, or every problem found, each naming the file and the field.
pub fn load_windows_file(file: &Path) -> Result<WindowRules, String> {
    let text = std::fs::read_to_string(file).map_err(|err| format!("{}: {err}", file.display()))?;
    let parsed: WindowsFile = toml::from_str(&text).map_err(|err| format!("{}: {err}", file.display()))?;
    let mut errors = Vec::new();
    parsed.default.validate("default", &mut errors);
    for (i, rule) in parsed.rules.iter().enumerate() {
        rule.window.validate(&format!("rules[{i}].window"), &mut errors);
    }
    let compiled = parsed
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| match globset::Glob::new(&rule.metric) {
            Ok(glob) => Some((glob.compile_matcher(), rule.window.kind())),
            Err(err) => {
                errors.push(FieldError::new(format!("rules[{i}].metric"), format!("{:?} is not a glob: {err}", rule.metric)));
                None
            }
        })
        .collect::<Vec<_>>();
    if !errors.is_empty() {
        return Err(errors.iter().map(|e| format!("{}: {e}", file.display())).collect::<Vec<_>>().join("; "));
    }
    Ok(WindowRules::new(parsed.default.kind(), compiled.into_iter().flatten().collect()))
}

/// A window shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WindowDef {
    /// Back-to-back windows of `size`.
    Tumbling {
        #[serde(with = "humantime_serde")]
        size: Duration,
    },
    /// Windows of `size` starting every `advance`.
    Hopping {
        #[serde(with = "humantime_serde")]
        size: Duration,
        #[serde(with = "humantime_serde")]
        advance: Duration,
    },
    /// Per series, a run of points each less than `gap` after the one before; the window ends `gap`
    /// after its last point.
    Session {
        #[serde(with = "humantime_serde")]
        gap: Duration,
    },
}

/// Windows for the metrics matching a glob (`latency_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowRule {
    pub metric: String,
    pub window: WindowDef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sketch {
    /// A quantile estimate is within this fraction of the true value (DDSketch's alpha).
    pub relative_accuracy: f64,
    /// Bin limit of a sketch; past it the lowest bins collapse.
    pub max_bins: u32,
    /// Quantiles reported in every aggregate.
    pub quantiles: Vec<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kafka: KafkaSettings::default(),
            group_id: "runnel-processor".to_owned(),
            topics: Topics {
                points: TopicSettings::new(topics::POINTS),
                aggregates: TopicSettings::new(topics::AGGREGATES),
                deadletter: TopicSettings::new(topics::DEADLETTER),
            },
            windows: Windows {
                default: WindowDef::Tumbling { size: Duration::from_secs(10) },
                rules: Vec::new(),
                allowed_lateness: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(30),
                max_future: Duration::from_secs(5 * 60),
                sketch: Sketch { relative_accuracy: 0.01, max_bins: 2048, quantiles: vec![0.5, 0.9, 0.99] },
                file: None,
                reload_interval: Duration::from_secs(2),
            },
            commit_interval: Duration::from_secs(1),
            delivery: Delivery::ExactlyOnce,
            transactional_id: format!("runnel-processor-{}", plumbing::config::hostname()),
            transaction_timeout: Duration::from_secs(10),
            changelog: Changelog { replication_factor: 1, segment_bytes: 16 * 1024 * 1024, restore_timeout: Duration::from_secs(120) },
            telemetry: TelemetrySettings::default(),
            ops: OpsSettings::on_port(9465),
        }
    }
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl WindowDef {
    pub fn kind(&self) -> WindowKind {
        match *self {
            Self::Tumbling { size } => WindowKind::Tumbling { size_ns: nanos(size) },
            Self::Hopping { size, advance } => WindowKind::Hopping { size_ns: nanos(size), advance_ns: nanos(advance) },
            Self::Session { gap } => WindowKind::Session { gap_ns: nanos(gap) },
        }
    }

    fn validate(&self, key: &str, errors: &mut Vec<FieldError>) {
        let ms = Duration::from_millis(1);
        let year = Duration::from_secs(366 * 24 * 3600);
        let text = humantime::format_duration;
        let (size, advance) = match *self {
            Self::Tumbling { size } => (size, size),
            Self::Hopping { size, advance } => (size, advance),
            Self::Session { gap } => {
                check(errors, gap >= ms && gap <= year, &format!("{key}.gap"), format!("{} must be between 1ms and a year", text(gap)));
                return;
            }
        };
        check(errors, size >= ms && size <= year, &format!("{key}.size"), format!("{} must be between 1ms and a year", text(size)));
        check(errors, advance >= ms && advance <= size, &format!("{key}.advance"), format!("{} must be between 1ms and the size {}", text(advance), text(size)));
        // Each point is added to size/advance windows: bound the fan-out.
        let fan_out = size.as_nanos() / advance.as_nanos().max(1);
        check(errors, fan_out <= 100, &format!("{key}.advance"), format!("{} puts every point in {fan_out} windows; at most 100", text(advance)));
    }
}

impl Windows {
    /// The compiled window rules.
    /// The running window definitions: those of `file` when there is one, else the settings' own.
    pub fn running_rules(&self) -> Result<WindowRules, String> {
        match &self.file {
            Some(file) => load_windows_file(file),
            None => self.rules().map_err(|err| err.to_string()),
        }
    }

    pub fn rules(&self) -> Result<WindowRules, globset::Error> {
        let rules = self
            .rules
            .iter()
            .map(|rule| Ok((globset::Glob::new(&rule.metric)?.compile_matcher(), rule.window.kind())))
            .collect::<Result<Vec<_>, globset::Error>>()?;
        Ok(WindowRules::new(self.default.kind(), rules))
    }

    pub fn sketch(&self) -> SketchSpec {
        SketchSpec {
            relative_accuracy: self.sketch.relative_accuracy,
            max_bins: self.sketch.max_bins,
            quantiles: self.sketch.quantiles.clone(),
        }
    }
}

impl ServiceSettings for Settings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.kafka.validate("kafka");
        errors.extend(self.topics.points.validate("topics.points"));
        errors.extend(self.topics.aggregates.validate("topics.aggregates"));
        errors.extend(self.topics.deadletter.validate("topics.deadletter"));
        check(&mut errors, !self.windows.idle_timeout.is_zero(), "windows.idle_timeout", "must be positive");
        errors.extend(self.telemetry.validate("telemetry"));
        errors.extend(self.ops.validate("ops"));
        let legal = !self.group_id.is_empty()
            && self.group_id.len() <= 200
            && self.group_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        check(
            &mut errors,
            legal,
            "group_id",
            format!("{:?} must be 1 to 200 of [a-zA-Z0-9._-]: it names the changelog topic", self.group_id),
        );
        check(&mut errors, self.changelog.replication_factor >= 1, "changelog.replication_factor", format!("{} must be at least 1", self.changelog.replication_factor));
        check(&mut errors, !self.changelog.restore_timeout.is_zero(), "changelog.restore_timeout", "must be positive");
        check(&mut errors, self.changelog.segment_bytes >= 1024 * 1024, "changelog.segment_bytes", format!("{} must be at least 1 MiB", self.changelog.segment_bytes));
        self.windows.default.validate("windows.default", &mut errors);
        if let Some(file) = &self.windows.file
            && let Err(problems) = load_windows_file(file)
        {
            errors.push(FieldError::new("windows.file", problems));
        }
        check(&mut errors, !self.windows.reload_interval.is_zero(), "windows.reload_interval", "must be positive");
        for (i, rule) in self.windows.rules.iter().enumerate() {
            rule.window.validate(&format!("windows.rules[{i}].window"), &mut errors);
            if let Err(err) = globset::Glob::new(&rule.metric) {
                errors.push(FieldError::new(format!("windows.rules[{i}].metric"), format!("{:?} is not a glob: {err}", rule.metric)));
            }
        }
        let sketch = &self.windows.sketch;
        check(
            &mut errors,
            sketch.relative_accuracy > 0.0 && sketch.relative_accuracy < 1.0,
            "windows.sketch.relative_accuracy",
            format!("{} must be between 0 and 1", sketch.relative_accuracy),
        );
        check(&mut errors, sketch.max_bins >= 128, "windows.sketch.max_bins", format!("{} must be at least 128", sketch.max_bins));
        for (i, q) in sketch.quantiles.iter().enumerate() {
            check(&mut errors, (0.0..=1.0).contains(q), &format!("windows.sketch.quantiles[{i}]"), format!("{q} must be in [0, 1]"));
        }
        check(&mut errors, self.windows.allowed_lateness <= Duration::from_secs(366 * 24 * 3600), "windows.allowed_lateness", format!("{} must be at most a year", humantime::format_duration(self.windows.allowed_lateness)));
        check(&mut errors, !self.commit_interval.is_zero(), "commit_interval", "must be positive");
        if self.delivery == Delivery::ExactlyOnce {
            check(&mut errors, !self.transactional_id.trim().is_empty(), "transactional_id", "must be set for exactly-once delivery");
            check(
                &mut errors,
                self.commit_interval < self.transaction_timeout,
                "commit_interval",
                format!(
                    "{} must be shorter than transaction_timeout {}",
                    humantime::format_duration(self.commit_interval),
                    humantime::format_duration(self.transaction_timeout)
                ),
            );
        }
        check(&mut errors, self.transaction_timeout >= Duration::from_secs(1), "transaction_timeout", "must be at least 1s");
        check(
            &mut errors,
            !self.kafka.options.contains_key("group.protocol"),
            "kafka.options.group.protocol",
            "the consumer protocol rebalances incrementally, which the processor does not support",
        );
        let strategy = self.kafka.options.get("partition.assignment.strategy");
        check(
            &mut errors,
            !strategy.is_some_and(|s| s.contains("cooperative")),
            "kafka.options.partition.assignment.strategy",
            "cooperative rebalancing is not supported by the processor: a revoke must hand over every partition",
        );
        check(
            &mut errors,
            self.topics.points.name != self.topics.aggregates.name,
            "topics.aggregates.name",
            "must differ from topics.points.name",
        );
        check(
            &mut errors,
            self.topics.deadletter.name != self.topics.points.name,
            "topics.deadletter.name",
            "must differ from topics.points.name: a dead letter would be read again",
        );
        errors
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }

    fn ops(&self) -> &OpsSettings {
        &self.ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_windows_file_replaces_the_settings_windows_and_a_bad_one_names_each_problem() {
        let path = std::env::temp_dir().join(format!("runnel-windows-{}.toml", std::process::id()));
        let good = "default = { kind = \"tumbling\", size = \"1m\" }\n[[rules]]\nmetric = \"cpu_*\"\nwindow = { kind = \"session\", gap = \"30s\" }\n";
        std::fs::write(&path, good).unwrap();
        let mut s = Settings::default();
        s.windows.file = Some(path.clone());
        assert_eq!(s.validate(), Vec::new());
        assert_eq!(s.windows.running_rules().unwrap().describe(), "default tumbling 1m; cpu_* session 30s");
        let bad = "default = { kind = \"tumbling\", size = \"0s\" }\n[[rules]]\nmetric = \"[\"\nwindow = { kind = \"tumbling\", size = \"1s\" }\n";
        std::fs::write(&path, bad).unwrap();
        let errors = s.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let shown = errors[0].to_string();
        assert!(shown.starts_with("windows.file: "), "{shown}");
        assert!(shown.contains("default.size: 0s must be between 1ms and a year"), "{shown}");
        assert!(shown.contains("rules[0].metric: \"[\" is not a glob"), "{shown}");
        std::fs::remove_file(&path).unwrap();
    }
}
