//! Threshold alert rules: a rule compares a series' window mean with a threshold; an alert fires when
//! the comparison becomes true and resolves when it becomes false, and only changes are reported. Pure,
//! no IO.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How a window mean is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtOrAbove,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtOrBelow,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Above => value > threshold,
            Self::AtOrAbove => value >= threshold,
            Self::Below => value < threshold,
            Self::AtOrBelow => value <= threshold,
        }
    }
}

/// A threshold rule on every series of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; part of every alert id.
    pub name: String,
    pub metric: String,
    /// One of `>`, `>=`, `<`, `<=`.
    pub op: Comparison,
    pub threshold: f64,
}

/// A change of an alert's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub rule: usize,
    pub firing: bool,
}

#[derive(Debug, Clone, Copy)]
struct AlertState {
    firing: bool,
    /// Start of the newest window evaluated; older or repeated windows do not re-evaluate.
    last_start_ns: i64,
}

/// The state of every (rule, series) pair.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    states: HashMap<(usize, String), AlertState>,
}

impl Evaluator {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules, states: HashMap::new() }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Evaluates every rule on `metric` for the window of series `key` starting at `start_ns` with
    /// `mean`; returns the alerts whose state changed.
    pub fn evaluate(&mut self, metric: &str, key: &str, start_ns: i64, mean: f64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.metric != metric {
                continue;
            }
            let holds = rule.op.holds(mean, rule.threshold);
            let state = self.states.entry((index, key.to_owned()));
            match state {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(AlertState { firing: holds, last_start_ns: start_ns });
                    if holds {
                        changes.push(Change { rule: index, firing: true });
                    }
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let state = slot.get_mut();
                    if start_ns <= state.last_start_ns {
                        continue;
                    }
                    state.last_start_ns = start_ns;
                    if holds != state.firing {
                        state.firing = holds;
                        changes.push(Change { rule: index, firing: holds });
                    }
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluator() -> Evaluator {
        Evaluator::new(vec![
            Rule { name: "hot".into(), metric: "temp".into(), op: Comparison::Above, threshold: 30.0 },
            Rule { name: "cold".into(), metric: "temp".into(), op: Comparison::AtOrBelow, threshold: 0.0 },
        ])
    }

    #[test]
    fn only_state_changes_are_reported() {
        let mut e = evaluator();
        let mut run = |start, mean| e.evaluate("temp", "temp{}", start, mean);
        assert_eq!(run(0, 20.0), vec![]);
        assert_eq!(run(10, 31.0), vec![Change { rule: 0, firing: true }]);
        assert_eq!(run(20, 35.0), vec![], "still firing: no new alert");
        assert_eq!(run(30, 30.0), vec![Change { rule: 0, firing: false }], "30 is not above 30");
        assert_eq!(run(40, 0.0), vec![Change { rule: 1, firing: true }]);
    }

    #[test]
    fn replayed_and_old_windows_do_not_re_evaluate() {
        let mut e = evaluator();
        assert_eq!(e.evaluate("temp", "k", 10, 40.0), vec![Change { rule: 0, firing: true }]);
        assert_eq!(e.evaluate("temp", "k", 10, 40.0), vec![]);
        assert_eq!(e.evaluate("temp", "k", 0, 10.0), vec![], "an older window cannot resolve a newer state");
        assert_eq!(e.evaluate("other", "k", 20, 99.0), vec![]);
    }

    #[test]
    fn series_are_independent() {
        let mut e = evaluator();
        assert_eq!(e.evaluate("temp", "a", 0, 40.0).len(), 1);
        assert_eq!(e.evaluate("temp", "b", 0, 40.0).len(), 1);
    }
}
