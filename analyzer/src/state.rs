//! The analyzer's in-memory state: a trend model per series and the rule evaluator, shared by the
//! consumer (which updates it) and the gRPC service (which reads it).

use std::collections::HashMap;

use proto::v1::{Aggregate, Alert, AlertState};

use crate::model::Regression;
use crate::rules::{Evaluator, Rule};

#[derive(Debug)]
pub struct Analysis {
    windows: usize,
    trends: HashMap<String, Regression>,
    evaluator: Evaluator,
}

impl Analysis {
    pub fn new(windows: usize, rules: Vec<Rule>) -> Self {
        Self { windows, trends: HashMap::new(), evaluator: Evaluator::new(rules) }
    }

    /// Folds in one aggregate; returns the alert changes it caused.
    pub fn observe(&mut self, aggregate: &Aggregate) -> Vec<Alert> {
        let (Some(series), Some(window)) = (&aggregate.series, &aggregate.window) else { return Vec::new() };
        let key = series.key();
        self.trends
            .entry(key.clone())
            .or_insert_with(|| Regression::new(self.windows))
            .observe(window.start_ns, window.end_ns, window.mean);
        let changes = self.evaluator.evaluate(&series.metric, &key, window.start_ns, window.mean);
        changes
            .into_iter()
            .map(|change| {
                let rule = &self.evaluator.rules()[change.rule];
                Alert {
                    id: format!("{}/{key}", rule.name),
                    rule: rule.name.clone(),
                    series: Some(series.clone()),
                    state: if change.firing { AlertState::Firing } else { AlertState::Resolved } as i32,
                    value: window.mean,
                    threshold: rule.threshold,
                    window_start_ns: window.start_ns,
                    window_end_ns: window.end_ns,
                }
            })
            .collect()
    }

    pub fn trend(&self, key: &str) -> Option<&Regression> {
        self.trends.get(key)
    }
}
