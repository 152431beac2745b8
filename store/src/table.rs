//! One kind of data (today the aggregates) as a query reads it: the segments each partition's manifest
//! lists in the shared object store, plus the rows this instance has read from Kafka and not yet made
//! durable. Every record is read once: a partition this instance ingests is read from its own manifest
//! and memory under one lock (rows leave memory in the same step that lists their segment), any other
//! partition from its latest published manifest.
//!
//! A downsampled tier has a manifest of its own per partition, whose end is the raw offset up to which
//! it has rolled up: a tier query reads the tier's segments plus the raw records past that end.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::manifest::{Manifest, SegmentMeta};
use crate::objects::{Objects, ObjectsError};
use crate::segment::{Located, from_parquet};

/// The object name prefix of the aggregates.
pub(crate) const AGGREGATES: &str = "aggregates";

/// How many manifest versions a partition keeps: readers that listed an older one list again.
const MANIFEST_VERSIONS_KEPT: u64 = 8;

/// A partition this instance ingests.
#[derive(Debug)]
pub(crate) struct Owned {
    /// Distinguishes this ownership from an earlier or later one of the same partition, so that a flush
    /// that outlived a handover changes nothing.
    pub(crate) generation: u64,
    pub(crate) manifest: Arc<Manifest>,
    /// Records read and not yet listed in a segment, in offset order, all at or past the manifest's end
    /// and past those being flushed.
    pub(crate) rows: Vec<Located>,
    /// The records a flush is writing: still served from memory until their segment is listed.
    pub(crate) flushing: Option<Arc<Vec<Located>>>,
    /// The offset of the first message read (where the first segment starts when nothing is durable).
    pub(crate) first_read: Option<i64>,
    /// One past the offset of the last message read.
    pub(crate) next_read: Option<i64>,
    /// Where reading was positioned: a message before it is a leftover of an earlier position.
    pub(crate) resume_from: Option<i64>,
    /// A segment written from the manifest's end before a crash and never listed ends here: the replay
    /// cuts its first segment at the same offset, so it rewrites that object instead of adding another.
    pub(crate) cut_at: Option<i64>,
    /// Flushes skipped while waiting to reach `cut_at`.
    pub(crate) waited: u32,
    /// Each tier's manifest, in the order of `Table::tiers`.
    pub(crate) tiers: Vec<Arc<Manifest>>,
}

/// A downsampled tier of the aggregates.
#[derive(Debug, Clone)]
pub(crate) struct Tier {
    /// Its object name prefix and SQL table name, e.g. `aggregates_1m`.
    pub(crate) kind: String,
    pub(crate) step_ns: i64,
    /// Rows whose step ended longer ago than this are deleted.
    pub(crate) retention: Option<std::time::Duration>,
}

impl Tier {
    pub(crate) fn new(base: &str, step: std::time::Duration, retention: Option<std::time::Duration>) -> Self {
        let secs = step.as_secs();
        let name = if secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX);
        Self { kind: format!("{base}_{name}"), step_ns, retention }
    }
}

/// What a query reads: every record of the selected time range once (and possibly others).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Raw segments.
    pub(crate) segments: Vec<Arc<RecordBatch>>,
    /// Raw rows not yet durable.
    pub(crate) rows: Vec<Located>,
    /// Segments of the tier asked for: rows of one step each, possibly several partial rows of one
    /// step (to be merged, never deduplicated).
    pub(crate) tier_segments: Vec<Arc<RecordBatch>>,
}

/// Decoded segments, the oldest evicted first past a byte budget. Segments never change, so a cached
/// one is never stale.
#[derive(Debug, Default)]
struct Cache {
    batches: HashMap<String, Arc<RecordBatch>>,
    order: VecDeque<(String, usize)>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) kind: String,
    pub(crate) topic: String,
    partitions: i32,
    pub(crate) objects: Objects,
    pub(crate) tiers: Vec<Tier>,
    pub(crate) owned: Mutex<HashMap<i32, Owned>>,
    generations: AtomicU64,
    /// The latest manifest seen of each (kind, partition) that another instance writes, by version
    /// name; kind 0 is the raw table, kind t + 1 tier t.
    manifests: Mutex<HashMap<(usize, i32), Versioned>>,
    cache: Mutex<Cache>,
    cache_budget: usize,
    /// Segments no manifest lists any more, each deleted once its time comes: a query that listed it
    /// a moment before can still read it.
    pub(crate) doomed: Mutex<VecDeque<(std::time::Instant, String)>>,
}

/// A manifest and the name of the version it was read from.
type Versioned = (String, Arc<Manifest>);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is still consistent (every update
    // is a single assignment or push), so the poison is ignored.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Table {
    pub(crate) fn new(kind: &str, topic: String, partitions: i32, objects: Objects, tiers: Vec<Tier>, cache_budget: usize) -> Self {
        Self {
            kind: kind.to_owned(),
            topic,
            partitions,
            objects,
            tiers,
            doomed: Mutex::default(),
            owned: Mutex::default(),
            generations: AtomicU64::new(0),
            manifests: Mutex::default(),
            cache: Mutex::default(),
            cache_budget,
        }
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }

    /// The object name prefix of the segments of kind `kind` (0 raw, t + 1 tier t) of a partition.
    pub(crate) fn prefix_of(&self, kind: usize, partition: i32) -> String {
        format!("{}/{}/p{partition:05}", self.kind_name(kind), self.topic)
    }

    /// The name of kind `kind`: 0 the raw table, t + 1 tier t.
    pub(crate) fn kind_name(&self, kind: usize) -> &str {
        match kind.checked_sub(1) {
            Some(t) => self.tiers.get(t).map_or(self.kind.as_str(), |tier| tier.kind.as_str()),
            None => &self.kind,
        }
    }

    /// The records whose time may lie in `[from_ns, to_ns)`, each once: raw, or with `tier` that
    /// tier's rows plus the raw records it has not rolled up yet.
    pub(crate) async fn snapshot(&self, from_ns: i64, to_ns: i64, tier: Option<usize>) -> Result<Snapshot> {
        // A segment listed in a manifest read a moment ago may since have been replaced by a compaction
        // and deleted: reading the newer manifest finds its replacement.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_snapshot(from_ns, to_ns, tier).await {
                Err(Error::Objects(ObjectsError::Store(object_store::Error::NotFound { path, .. }))) if attempts < 3 => {
                    tracing::debug!(%path, "segment replaced while read; reading the manifest again");
                    lock(&self.manifests).clear();
                }
                other => return other,
            }
        }
    }

    async fn try_snapshot(&self, from_ns: i64, to_ns: i64, tier: Option<usize>) -> Result<Snapshot> {
        let (mut raw, mut rolled): (Vec<SegmentMeta>, Vec<SegmentMeta>) = (Vec::new(), Vec::new());
        let mut snapshot = Snapshot::default();
        let mut take = |manifest: &Manifest, tier_manifest: Option<&Manifest>| {
            let rolled_up_to = tier_manifest.and_then(Manifest::next_offset);
            raw.extend(
                manifest.overlapping(from_ns, to_ns).filter(|s| rolled_up_to.is_none_or(|end| s.first_offset >= end)).cloned(),
            );
            if let Some(m) = tier_manifest {
                rolled.extend(m.overlapping(from_ns, to_ns).cloned());
            }
        };
        let owned: Vec<i32> = {
            let owned = lock(&self.owned);
            for state in owned.values() {
                take(&state.manifest, tier.and_then(|t| state.tiers.get(t)).map(Arc::as_ref));
                // Only the rows the query can use are copied: memory may hold a flush interval of data.
                let in_range = |r: &&Located| r.aggregate.window.as_ref().is_some_and(|w| (from_ns..to_ns).contains(&w.start_ns));
                snapshot.rows.extend(state.flushing.iter().flat_map(|f| f.iter()).chain(&state.rows).filter(in_range).cloned());
            }
            owned.keys().copied().collect()
        };
        for partition in (0..self.partitions).filter(|p| !owned.contains(p)) {
            // The raw manifest first: a tier read after it may have rolled up more (its raw segments are
            // then left out) but never less than the raw manifest still lists.
            let manifest = self.manifest(0, partition).await?;
            let tier_manifest = match tier {
                Some(t) => Some(self.manifest(t + 1, partition).await?),
                None => None,
            };
            take(&manifest, tier_manifest.as_deref());
        }
        for segment in &raw {
            snapshot.segments.push(self.segment(segment).await?);
        }
        for segment in &rolled {
            snapshot.tier_segments.push(self.segment(segment).await?);
        }
        Ok(snapshot)
    }

    /// The latest published manifest of kind `kind` of a partition another instance writes.
    pub(crate) async fn manifest(&self, kind: usize, partition: i32) -> Result<Arc<Manifest>> {
        let name = self.kind_name(kind);
        let Some(version) = self.objects.latest_manifest_name(name, &self.topic, partition).await? else {
            return Ok(Arc::default());
        };
        if let Some((cached, manifest)) = lock(&self.manifests).get(&(kind, partition))
            && *cached == version
        {
            return Ok(Arc::clone(manifest));
        }
        let manifest = match self.objects.read_manifest(&version).await? {
            Some(manifest) => Arc::new(manifest),
            // Superseded and pruned since it was listed: the next listing has its successor.
            None => Arc::new(self.objects.latest_manifest(name, &self.topic, partition).await?),
        };
        lock(&self.manifests).insert((kind, partition), (version, Arc::clone(&manifest)));
        Ok(manifest)
    }

    /// A segment's rows as one record batch.
    pub(crate) async fn segment(&self, segment: &SegmentMeta) -> Result<Arc<RecordBatch>> {
        if let Some(batch) = lock(&self.cache).batches.get(&segment.name) {
            return Ok(Arc::clone(batch));
        }
        let bytes = self.objects.get(&segment.name).await?;
        let batch = tokio::task::spawn_blocking(move || -> Result<RecordBatch> {
            let batches = from_parquet(bytes)?;
            let schema = batches.first().map_or_else(crate::segment::aggregates_schema, RecordBatch::schema);
            Ok(arrow::compute::concat_batches(&schema, &batches).map_err(crate::segment::SegmentError::from)?)
        })
        .await??;
        let batch = Arc::new(batch);
        let size = batch.get_array_memory_size();
        let mut cache = lock(&self.cache);
        if cache.batches.insert(segment.name.clone(), Arc::clone(&batch)).is_none() {
            cache.order.push_back((segment.name.clone(), size));
            cache.bytes += size;
        }
        while cache.bytes > self.cache_budget {
            let Some((name, size)) = cache.order.pop_front() else { break };
            cache.batches.remove(&name);
            cache.bytes -= size;
        }
        Ok(batch)
    }

    /// Publishes `manifest` as the next version of kind `kind` (0 raw, t + 1 tier t) of a partition this
    /// instance owns under `generation`, then applies `update` to the partition's state. When another
    /// instance published that version first, this one has lost the partition: its state is dropped
    /// and `Fenced` returned.
    pub(crate) async fn publish(
        &self,
        kind: usize,
        partition: i32,
        generation: u64,
        manifest: Manifest,
        update: impl FnOnce(&mut Owned),
    ) -> Result<()> {
        let name = self.kind_name(kind).to_owned();
        if let Err(err) = self.objects.publish_manifest(&name, &self.topic, partition, &manifest).await {
            if let ObjectsError::Fenced { .. } = err {
                let mut owned = lock(&self.owned);
                if owned.get(&partition).is_some_and(|s| s.generation == generation) {
                    owned.remove(&partition);
                }
                tracing::warn!(partition, kind = %name, version = manifest.version, "another instance published this partition's next manifest; giving it up");
            }
            return Err(err.into());
        }
        let version = manifest.version;
        {
            let mut owned = lock(&self.owned);
            if let Some(state) = owned.get_mut(&partition).filter(|s| s.generation == generation) {
                let manifest = Arc::new(manifest);
                match kind.checked_sub(1) {
                    None => state.manifest = manifest,
                    Some(t) => {
                        if let Some(slot) = state.tiers.get_mut(t) {
                            *slot = manifest;
                        }
                    }
                }
                update(state);
            }
        }
        if version > MANIFEST_VERSIONS_KEPT
            && let Err(err) = self.objects.prune_manifests(&name, &self.topic, partition, version - MANIFEST_VERSIONS_KEPT).await
        {
            tracing::debug!(error = %err, partition, "old manifest versions not pruned yet");
        }
        Ok(())
    }

    /// Rows held in memory, not yet durable.
    pub(crate) fn pending_rows(&self) -> usize {
        lock(&self.owned).values().map(|o| o.rows.len() + o.flushing.as_ref().map_or(0, |f| f.len())).sum()
    }
}
