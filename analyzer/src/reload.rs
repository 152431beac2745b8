//! Alert rules from a file of their own, reloaded while the analyzer runs: on SIGHUP, and whenever the
//! file's content changes (checked every `reload_interval`). A file that does not parse or holds an
//! invalid rule is refused with a log line naming the problem, and the running rules stay. Rules kept
//! as they were keep their alerts' state (`rules::Evaluator::replace`); the models are not touched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::rules::Rule;
use crate::state::Analysis;

/// A rules file: `[[rules]]` tables, as in the settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<Rule>,
}

/// The rules of the settings followed by those of `file`, or every problem found, each naming the
/// file and the rule's field.
pub fn load(settings_rules: &[Rule], file: &Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(file).map_err(|err| format!("{}: {err}", file.display()))?;
    let parsed: RulesFile = toml::from_str(&text).map_err(|err| format!("{}: {err}", file.display()))?;
    let mut problems = Vec::new();
    let mut names: Vec<&str> = settings_rules.iter().map(|r| r.name.as_str()).collect();
    for (i, rule) in parsed.rules.iter().enumerate() {
        for (field, problem) in rule.problems() {
            problems.push(format!("{}: rules[{i}].{field}: {problem}", file.display()));
        }
        if names.contains(&rule.name.as_str()) {
            problems.push(format!("{}: rules[{i}].name: {:?} is used by an earlier rule", file.display(), rule.name));
        }
        names.push(&rule.name);
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(settings_rules.iter().cloned().chain(parsed.rules).collect())
}

/// Reload counters.
#[derive(Debug, Default)]
pub struct Reloads {
    /// Rule sets put in place after a change.
    pub applied: AtomicU64,
    /// Files refused.
    pub refused: AtomicU64,
}

/// Watches `file` until `shutdown`, putting each valid new version of its rules in place. Without a
/// file, a SIGHUP is only logged (rather than ending the process, as it would by default).
pub(crate) async fn watch(
    file: Option<PathBuf>,
    settings_rules: Vec<Rule>,
    interval: Duration,
    analyses: Vec<Arc<Mutex<Analysis>>>,
    counters: Arc<Reloads>,
    shutdown: plumbing::Shutdown,
) -> crate::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(crate::Error::Bind)?;
    let Some(file) = file else {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = hangup.recv() => tracing::info!("SIGHUP: no rules_file to reload"),
            }
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the running rules were read from: a change of content is what triggers a reload.
    let mut loaded = std::fs::read(&file).ok();
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => true,
            _ = tick.tick() => false,
        };
        let content = std::fs::read(&file).ok();
        if !forced && content == loaded {
            continue;
        }
        loaded = content;
        match load(&settings_rules, &file) {
            Ok(rules) => {
                let total = rules.len();
                // Each analysis (windows, and points if any) keeps its own alerts of unchanged rules.
                let kept: usize = analyses.iter().map(|a| a.lock().unwrap_or_else(PoisonError::into_inner).replace_rules(rules.clone())).sum();
                counters.applied.fetch_add(1, Ordering::SeqCst);
                tracing::info!(file = %file.display(), rules = total, kept, "alert rules reloaded");
            }
            Err(problems) => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                tracing::error!(%problems, "alert rules file refused; the running rules stay");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Comparison;

    fn file(name: &str, body: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("runnel-rules-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, body).unwrap();
        path
    }

    #[test]
    fn a_rules_file_adds_to_the_settings_rules() {
        let base = [Rule::threshold("hot", "temp", Comparison::Above, 30.0)];
        let path = file("good", "[[rules]]\nname = \"cold\"\nmetric = \"temp\"\nop = \"<\"\nthreshold = 0.0\n");
        let names: Vec<String> = load(&base, &path).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["hot", "cold"]);
    }

    #[test]
    fn a_bad_rules_file_names_every_problem() {
        let base = [Rule::threshold("hot", "temp", Comparison::Above, 30.0)];
        let path = file("bad", "[[rules]]\nname = \"hot\"\nmetric = \"temp\"\nop = \">\"\n");
        let shown = path.display().to_string();
        assert_eq!(
            load(&base, &path),
            Err(format!(
                "{shown}: rules[0].threshold: must be a finite number; {shown}: rules[0].name: \"hot\" is used by an earlier rule"
            ))
        );
        let path = file("typo", "[[rules]]\nname = \"x\"\nmetric = \"temp\"\nop = \">\"\nthreshhold = 1.0\n");
        let error = load(&base, &path).unwrap_err();
        assert!(error.contains("unknown field `threshhold`"), "{error}");
        assert!(load(&base, Path::new("/nonexistent/rules.toml")).unwrap_err().starts_with("/nonexistent/rules.toml: "));
    }
}
