//! Alert rules from a file of their own, reloaded while the analyzer runs: on SIGHUP, and whenever the
//! file's content changes (checked every `reload_interval`). A file that does not parse or holds an
//! invalid rule is refused with a log line naming the problem, and the running rules stay. Rules kept
//! as they were keep their alerts' state (`rules::Evaluator::replace`); the models are not touched.

use std::path::{Path, PathBuf};
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

pub use plumbing::reload::Reloads;

/// Watches `file` until `shutdown`, putting each valid new version of its rules in place: each
/// analysis (windows, and points if any) keeps the alerts of the rules that stayed as they were.
pub(crate) async fn watch(
    file: Option<PathBuf>,
    settings_rules: Vec<Rule>,
    interval: Duration,
    analyses: Vec<Arc<Mutex<Analysis>>>,
    counters: Arc<Reloads>,
    shutdown: plumbing::Shutdown,
) -> crate::Result<()> {
    let apply = |file: &Path| {
        let rules = load(&settings_rules, file)?;
        let total = rules.len();
        let kept: usize = analyses.iter().map(|a| a.lock().unwrap_or_else(PoisonError::into_inner).replace_rules(rules.clone())).sum();
        Ok(format!("{total} alert rules, the alerts of {kept} kept"))
    };
    plumbing::reload::watch("alert rules", file, interval, counters, shutdown, apply).await.map_err(crate::Error::Bind)
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
