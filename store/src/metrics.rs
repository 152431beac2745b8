//! The store's metrics: per kind of record, what was read, made durable and maintained, with flush
//! and upkeep timings; per query method, its latency; and its consumers' Kafka statistics (lag).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plumbing::ops::{KafkaStats, Registry, Scrape, Scraped};

use crate::grpc::QueryMetrics;
use crate::kafka::Stats;
use crate::maintain::Upkeep;
use crate::segment::Kind;

/// `stats` and `upkeeps` are in the order of [`Kind::ALL`].
pub(crate) fn register(registry: &mut Registry, stats: Vec<Arc<Stats>>, upkeeps: Vec<Arc<Upkeep>>, queries: Arc<QueryMetrics>, kafka: KafkaStats) {
    registry.register_collector(Box::new(kafka));
    registry.register_collector(Box::new(Scraped(move |scrape: &mut Scrape<'_>| {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let kinds = || Kind::ALL.iter().map(|kind| [("kind", kind.name())]);
        type Counted<T> = (&'static str, &'static str, fn(&T) -> &AtomicU64);
        let ingest: [Counted<Stats>; 6] = [
            ("runnel_store_messages_read", "messages polled from Kafka (again after a take-over)", |s| &s.read),
            ("runnel_store_rows", "rows made durable: listed in a manifest", |s| &s.rows),
            ("runnel_store_segments", "segments written and listed", |s| &s.segments),
            ("runnel_store_flush_errors", "flushes that failed; their rows stay in memory for the next", |s| &s.flush_errors),
            ("runnel_store_malformed_messages", "messages that are not a record of their topic's kind, skipped", |s| &s.malformed),
            ("runnel_store_takeovers", "partitions taken over", |s| &s.takeovers),
        ];
        for (name, help, field) in ingest {
            scrape.counters(name, help, kinds().zip(&stats).map(|(kind, s)| (kind, get(field(s)))))?;
        }
        let upkeep: [Counted<Upkeep>; 4] = [
            ("runnel_store_rollups", "tier segments written by rolling raw segments up", |u| &u.rollups),
            ("runnel_store_compactions", "runs of segments merged into one", |u| &u.compactions),
            ("runnel_store_expired_segments", "segments removed by retention", |u| &u.expired),
            ("runnel_store_upkeep_errors", "upkeep rounds that failed, retried at the next", |u| &u.errors),
        ];
        for (name, help, field) in upkeep {
            scrape.counters(name, help, kinds().zip(&upkeeps).map(|(kind, u)| (kind, get(field(u)))))?;
        }
        let flushes = kinds().zip(&stats).map(|(kind, s)| (kind, &s.flush_seconds));
        scrape.histograms("runnel_store_flush_seconds", "encoding, writing and listing one segment", flushes)?;
        let rounds = kinds().zip(&upkeeps).map(|(kind, u)| (kind, &u.round_seconds));
        scrape.histograms("runnel_store_upkeep_seconds", "one round of roll-ups, compaction, expiry and deletes", rounds)?;
        let methods = queries.by_method().map(|(method, seconds)| ([("method", method)], seconds));
        scrape.histograms("runnel_store_query_seconds", "query latency by gRPC method, refusals included", methods)
    })));
}
