//! The analyzer's metrics: alerts by state (changes sent, and how many are in each state now),
//! what its loops read and committed, rule reloads, and its consumers' Kafka statistics (lag).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use plumbing::ops::{KafkaStats, Registry, Scrape, Scraped};
use proto::v1::AlertState;

use crate::alerts::AlertBook;
use crate::kafka::{ALERT_STATES, Stats};
use crate::reload::Reloads;

/// The label of an alert state (by its number).
fn state_name(state: usize) -> &'static str {
    match i32::try_from(state).ok().and_then(|n| AlertState::try_from(n).ok()) {
        Some(AlertState::Firing) => "firing",
        Some(AlertState::Resolved) => "resolved",
        Some(AlertState::Pending) => "pending",
        Some(AlertState::Inactive) => "inactive",
        Some(AlertState::NoData) => "no_data",
        Some(AlertState::Unspecified) | None => "unspecified",
    }
}

/// `loops` are the loop over the aggregates and, if there is one, the loop over points.
pub(crate) fn register(registry: &mut Registry, loops: Vec<Arc<Stats>>, book: Arc<Mutex<AlertBook>>, reloads: Arc<Reloads>, kafka: KafkaStats) {
    registry.register_collector(Box::new(kafka));
    registry.register_collector(Box::new(Scraped(move |scrape: &mut Scrape<'_>| {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let sum = |field: fn(&Stats) -> &AtomicU64| loops.iter().map(|s| get(field(s))).sum::<u64>();
        let states = 1..ALERT_STATES;
        let sent = states.clone().map(|i| ([("state", state_name(i))], loops.iter().map(|s| get(&s.alerts_by_state[i])).sum::<u64>()));
        scrape.counters("runnel_analyzer_alert_changes", "alert changes sent, by the state changed to (aborted ones included)", sent)?;
        let now = book.lock().unwrap_or_else(PoisonError::into_inner).count_by_state();
        let current = states.map(|i| ([("state", state_name(i))], now[i]));
        scrape.gauges("runnel_analyzer_alerts", "alerts in each state now, as the alerts topic says", current)?;
        scrape.counter("runnel_analyzer_records_read", "input records read (aggregates, and points of metrics modelled per point)", sum(|s| &s.read))?;
        scrape.counter("runnel_analyzer_transactions", "transactions committed", sum(|s| &s.transactions))?;
        scrape.counter("runnel_analyzer_restored_series", "series restored from the changelog", sum(|s| &s.restored_series))?;
        scrape.counter("runnel_analyzer_rewinds", "rewinds to the last commit after a failed transaction", sum(|s| &s.rewinds))?;
        scrape.gauge("runnel_analyzer_assigned_partitions", "input partitions owned now", sum(|s| &s.partitions))?;
        let reloaded = [([("outcome", "applied")], get(&reloads.applied)), ([("outcome", "refused")], get(&reloads.refused))];
        scrape.counters("runnel_analyzer_rule_reloads", "rule files reloaded: applied, or refused as invalid", reloaded)
    })));
}
