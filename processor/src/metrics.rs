//! The processor's metrics: its counters, read when Prometheus scrapes, the watermark delay of each
//! owned partition, the close-to-commit latency of windows, and its Kafka clients' statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plumbing::ops::{Registry, Scrape, Scraped};
use plumbing::reload::Reloads;

use crate::kafka::Shared;

pub(crate) fn register(registry: &mut Registry, shared: &Arc<Shared>, reloads: Arc<Reloads>) {
    registry.register_collector(Box::new(shared.kafka_stats.clone()));
    let shared = Arc::clone(shared);
    registry.register_collector(Box::new(Scraped(move |scrape: &mut Scrape<'_>| {
        let stats = &shared.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters: [(&str, &str, &AtomicU64); 12] = [
            ("runnel_processor_points", "points merged into a window (again after a rewind)", &stats.points),
            ("runnel_processor_late_points", "points that arrived after their window closed, dead-lettered", &stats.late_points),
            ("runnel_processor_future_points", "points too far ahead of the processor's clock, dead-lettered", &stats.future_points),
            ("runnel_processor_malformed_messages", "messages on the points topic that are not a point, dead-lettered", &stats.malformed),
            ("runnel_processor_dead_letters", "dead letters produced: late, future and malformed points", &stats.dead_letters),
            ("runnel_processor_windows_emitted", "aggregates produced, including those of aborted transactions", &stats.windows_emitted),
            ("runnel_processor_idle_advances", "windows closed because their partition went quiet", &stats.idle_advances),
            ("runnel_processor_transactions", "transactions committed", &stats.transactions),
            ("runnel_processor_early_commits", "commits made before the regular tick, for closed windows", &stats.early_commits),
            ("runnel_processor_rewinds", "rewinds to the last committed checkpoint after a failed transaction", &stats.rewinds),
            ("runnel_processor_changelog_records", "changelog records produced, including aborted ones", &stats.changelog_records),
            ("runnel_processor_restored_windows", "open windows read back from the changelog", &stats.restored_windows),
        ];
        for (name, help, counter) in counters {
            scrape.counter(name, help, get(counter))?;
        }
        let commit_seconds = get(&stats.commit_micros) as f64 / 1e6;
        scrape.counter("runnel_processor_commit_seconds", "wall-clock time spent committing", commit_seconds)?;
        let reloaded = [([("outcome", "applied")], get(&reloads.applied)), ([("outcome", "refused")], get(&reloads.refused))];
        scrape.counters("runnel_processor_window_reloads", "windows files reloaded: applied, or refused as invalid", reloaded)?;
        scrape.gauge("runnel_processor_assigned_partitions", "input partitions this instance owns", get(&stats.assigned_partitions) as i64)?;
        let help = "from a window's aggregate being sent (as its window closed) to the commit that made it visible";
        scrape.histogram("runnel_processor_window_close_to_commit_seconds", help, &shared.close_to_commit)?;
        let now_ns = crate::kafka::now_ns();
        let delays = shared.watermarks().into_iter().map(|(partition, watermark_ns)| {
            let delay_seconds = (now_ns - watermark_ns) as f64 / 1e9;
            ([("partition", partition.to_string())], delay_seconds)
        });
        scrape.gauges("runnel_processor_watermark_delay_seconds", "wall clock minus the partition's watermark (event time)", delays)
    })));
}
