//! The upkeep of the partitions this instance owns, run beside the flushes (a manifest change is applied
//! to the version held at the moment it is published, and publishers take turns): rolling raw windows
//! up into the tiers, compacting runs of small segments,
//! expiring what is past retention, and deleting the segments no manifest lists any more once their
//! grace is over.
//!
//! Every change is a new manifest version listing the same records (or fewer, by retention), so a
//! query sees either the old segments or their replacement, never both and never neither; what it
//! listed just before a change stays readable for the grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::RecordBatch;

use crate::config;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, SegmentMeta};
use crate::objects::ObjectsError;
use crate::rollup::{Rows, roll_up};
use crate::segment::{Kind, concat, encode_segment, segment_name};
use crate::table::{Table, lock};

/// Most raw rows one roll-up reads, so that one partition's backlog does not hold up the others.
const ROLLUP_ROWS: u64 = 2_000_000;

/// What upkeep is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) retention: Option<Duration>,
    pub(crate) compact_segments: usize,
    pub(crate) compact_rows: u64,
    pub(crate) delete_grace: Duration,
    pub(crate) interval: Duration,
}

impl Policy {
    /// The policy of the table of `kind`.
    pub(crate) fn of(kind: Kind, s: &config::Storage) -> Self {
        Self {
            retention: s.retention.of(kind),
            compact_segments: s.compact_segments,
            compact_rows: s.compact_rows,
            delete_grace: s.delete_grace,
            interval: s.maintenance_interval,
        }
    }
}

/// Counters of upkeep.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// Tier segments written by rolling raw segments up.
    pub rollups: AtomicU64,
    /// Runs of segments merged into one.
    pub compactions: AtomicU64,
    /// Segments removed by retention.
    pub expired: AtomicU64,
    /// Segment objects deleted after their grace.
    pub deleted: AtomicU64,
    /// Upkeep runs that failed (retried at the next).
    pub errors: AtomicU64,
    /// How long each round of upkeep (roll-ups, compaction, expiry, deletes) took.
    pub round_seconds: plumbing::ops::Seconds,
}

/// One round of upkeep over every owned partition.
pub(crate) async fn run(table: &Table, policy: &Policy, counters: &Upkeep) {
    let started = std::time::Instant::now();
    delete_doomed(table, counters).await;
    let owned: Vec<(i32, u64)> = lock(&table.owned).iter().map(|(p, s)| (*p, s.generation)).collect();
    for (partition, generation) in owned {
        match upkeep(table, policy, counters, partition, generation).await {
            Ok(()) | Err(Error::Objects(ObjectsError::Fenced { .. })) => {}
            Err(err) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, partition, "upkeep failed; retried at the next round");
            }
        }
    }
    counters.round_seconds.observe(started.elapsed());
}

async fn upkeep(table: &Table, policy: &Policy, counters: &Upkeep, partition: i32, generation: u64) -> Result<()> {
    for tier in 0..table.tiers.len() {
        roll_up_tier(table, counters, partition, generation, tier).await?;
    }
    for kind in 0..=table.tiers.len() {
        compact(table, policy, counters, partition, generation, kind).await?;
    }
    expire(table, policy, counters, partition, generation).await
}

/// The partition's manifests (raw, then each tier's), while this instance still owns it under
/// `generation`.
fn manifests(table: &Table, partition: i32, generation: u64) -> Option<Vec<Arc<Manifest>>> {
    let owned = lock(&table.owned);
    let state = owned.get(&partition).filter(|s| s.generation == generation)?;
    Some(std::iter::once(Arc::clone(&state.manifest)).chain(state.tiers.iter().cloned()).collect())
}

/// The end of what every tier has rolled up: raw segments before it may be compacted or expired.
fn rolled_by_all(manifests: &[Arc<Manifest>]) -> i64 {
    manifests.iter().skip(1).map(|m| m.next_offset().unwrap_or(i64::MIN)).min().unwrap_or(i64::MAX)
}

/// The rows of `segments`, decoded.
async fn rows_of(table: &Table, segments: &[SegmentMeta]) -> Result<Vec<Arc<RecordBatch>>> {
    let mut batches = Vec::with_capacity(segments.len());
    for segment in segments {
        batches.push(table.segment(segment).await?);
    }
    Ok(batches)
}

/// Rolls the raw segments past a tier's end up into one new segment of the tier.
async fn roll_up_tier(table: &Table, counters: &Upkeep, partition: i32, generation: u64, tier: usize) -> Result<()> {
    let Some(manifests) = manifests(table, partition, generation) else { return Ok(()) };
    let (raw, rolled) = (&manifests[0], &manifests[tier + 1]);
    let end = rolled.next_offset();
    let mut rows = 0;
    let sources: Vec<SegmentMeta> = raw
        .segments
        .iter()
        .filter(|s| end.is_none_or(|end| s.first_offset >= end))
        .take_while(|s| {
            let take = rows == 0 || rows + s.rows <= ROLLUP_ROWS;
            rows += s.rows;
            take
        })
        .cloned()
        .collect();
    let (Some(first), Some(last)) = (sources.first(), sources.last()) else { return Ok(()) };
    let (first, next) = (end.unwrap_or(first.first_offset), last.next_offset);
    let batches = rows_of(table, &sources).await?;
    let name = segment_name(&table.tiers[tier].kind, &table.topic, partition, first, next);
    let step = table.tiers[tier].step_ns;
    let (bytes, meta) = tokio::task::spawn_blocking(move || -> Result<_> {
        let rolled = roll_up(&concat(Kind::Aggregates, &batches)?, step, Rows::Windows)?;
        Ok(encode_segment(&rolled, Kind::Aggregates.time_column(), name, first, next)?)
    })
    .await??;
    table.objects.put_segment(&meta.name, bytes).await?;
    let listing = |current: &Manifest| {
        let mut next = current.clone();
        next.append(meta).map_err(|err| Error::Internal(err.to_string()))?;
        Ok(Some(next))
    };
    table.publish(tier + 1, partition, generation, listing, |_| {}).await?;
    counters.rollups.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The first run of at least `compact_segments` consecutive small segments that may be merged, capped
/// at `compact_rows` rows in all.
fn run_to_compact<'a>(manifest: &'a Manifest, policy: &Policy, before: i64) -> Option<&'a [SegmentMeta]> {
    let segments = &manifest.segments;
    let mut start = 0;
    while start < segments.len() {
        let mut end = start;
        let mut rows = 0;
        while let Some(s) = segments.get(end) {
            if s.rows >= policy.compact_rows || s.next_offset > before || rows + s.rows > policy.compact_rows {
                break;
            }
            rows += s.rows;
            end += 1;
        }
        if end - start >= policy.compact_segments {
            return segments.get(start..end);
        }
        start = end.max(start + 1);
    }
    None
}

/// Merges one run of small segments of kind `kind` (0 raw, t + 1 tier t) into one.
async fn compact(table: &Table, policy: &Policy, counters: &Upkeep, partition: i32, generation: u64, kind: usize) -> Result<()> {
    let Some(manifests) = manifests(table, partition, generation) else { return Ok(()) };
    // Raw segments are merged only once every tier has rolled them up: a tier reads raw segments that
    // start at or past its end, and a merged one straddling that end would be half missed.
    let before = if kind == 0 { rolled_by_all(&manifests) } else { i64::MAX };
    let manifest = &manifests[kind];
    let Some(run) = run_to_compact(manifest, policy, before) else { return Ok(()) };
    let run = run.to_vec();
    let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(()) };
    let (first, next) = (first.first_offset, last.next_offset);
    let batches = rows_of(table, &run).await?;
    let name = segment_name(table.kind_name(kind), &table.topic, partition, first, next);
    let step = kind.checked_sub(1).map(|t| table.tiers[t].step_ns);
    let record = table.record;
    let (bytes, meta) = tokio::task::spawn_blocking(move || -> Result<_> {
        let merged = match step {
            // A tier's partial rows of one step become one.
            Some(step) => roll_up(&concat(record, &batches)?, step, Rows::Parts)?,
            // Raw records are kept as they are, every copy, in offset order.
            None => concat(record, &batches)?,
        };
        Ok(encode_segment(&merged, record.time_column(), name, first, next)?)
    })
    .await??;
    table.objects.put_segment(&meta.name, bytes).await?;
    let mut replaced = Vec::new();
    let merging = |current: &Manifest| {
        let mut next = current.clone();
        replaced = next.compact(meta, kind == 0).map_err(|err| Error::Internal(err.to_string()))?;
        Ok(Some(next))
    };
    if table.publish(kind, partition, generation, merging, |_| {}).await? {
        doom(table, policy, replaced);
        counters.compactions.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Drops the leading segments past retention: raw ones once every tier has rolled them up, and a tier's
/// once their steps have ended that long ago.
async fn expire(table: &Table, policy: &Policy, counters: &Upkeep, partition: i32, generation: u64) -> Result<()> {
    let now_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let Some(manifests) = manifests(table, partition, generation) else { return Ok(()) };
    let rolled = rolled_by_all(&manifests);
    for kind in 0..manifests.len() {
        let (retention, step) = match kind.checked_sub(1) {
            None => (policy.retention, 0),
            Some(t) => (table.tiers[t].retention, table.tiers[t].step_ns),
        };
        let Some(retention) = retention else { continue };
        let cutoff = now_ns.saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX));
        let mut gone = Vec::new();
        let expiring = |current: &Manifest| {
            let mut next = current.clone();
            gone = next.expire(|s| s.max_time_ns.saturating_add(step) < cutoff && (kind > 0 || s.next_offset <= rolled));
            Ok((!gone.is_empty()).then_some(next))
        };
        if !table.publish(kind, partition, generation, expiring, |_| {}).await? {
            continue;
        }
        counters.expired.fetch_add(gone.len() as u64, Ordering::Relaxed);
        tracing::info!(partition, kind = table.kind_name(kind), segments = gone.len(), "segments past retention removed");
        doom(table, policy, gone);
    }
    Ok(())
}

/// Schedules the deletion of segments no manifest lists any more.
fn doom(table: &Table, policy: &Policy, segments: Vec<SegmentMeta>) {
    doom_names(table, policy.delete_grace, segments.into_iter().map(|s| s.name));
}

/// Schedules the deletion of the objects `names`, `grace` from now.
pub(crate) fn doom_names(table: &Table, grace: Duration, names: impl IntoIterator<Item = String>) {
    let due = Instant::now() + grace;
    lock(&table.doomed).extend(names.into_iter().map(|name| (due, name)));
}

async fn delete_doomed(table: &Table, counters: &Upkeep) {
    let now = Instant::now();
    let due: Vec<String> = {
        let mut doomed = lock(&table.doomed);
        let count = doomed.iter().take_while(|(at, _)| *at <= now).count();
        doomed.drain(..count).map(|(_, name)| name).collect()
    };
    for name in due {
        match table.objects.delete(&name).await {
            Ok(()) => {
                counters.deleted.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(error = %err, %name, "segment not deleted; it stays as an orphan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: i64, next: i64, rows: u64) -> SegmentMeta {
        SegmentMeta { name: format!("s{first}"), first_offset: first, next_offset: next, rows, bytes: 1, min_time_ns: 0, max_time_ns: 0 }
    }

    #[test]
    fn runs_to_compact_are_small_consecutive_and_already_rolled_up() {
        let policy = Policy { retention: None, compact_segments: 3, compact_rows: 100, delete_grace: Duration::ZERO, interval: Duration::ZERO };
        let mut m = Manifest::default();
        for (first, rows) in [(0, 10), (10, 500), (20, 10), (30, 10), (40, 10), (50, 90), (60, 10)] {
            m.append(seg(first, first + 10, rows)).unwrap();
        }
        let firsts = |run: Option<&[SegmentMeta]>| run.map(|r| r.iter().map(|s| s.first_offset).collect::<Vec<_>>());
        // The big segment breaks the first run; the second stops before the 90 that would pass 100 rows.
        assert_eq!(firsts(run_to_compact(&m, &policy, i64::MAX)), Some(vec![20, 30, 40]));
        assert_eq!(firsts(run_to_compact(&m, &policy, 40)), None, "not yet rolled up past 40");
        let strict = Policy { compact_segments: 4, ..policy };
        assert_eq!(firsts(run_to_compact(&m, &strict, i64::MAX)), None);
        assert_eq!(rolled_by_all(&[Arc::new(m.clone())]), i64::MAX, "no tiers: nothing waits");
        assert_eq!(rolled_by_all(&[Arc::new(m.clone()), Arc::new(Manifest::default())]), i64::MIN, "a tier that rolled nothing");
    }
}
