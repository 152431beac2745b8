//! One kind of data (points, aggregates or alerts) as a query reads it: the segments each partition's manifest
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

use arrow::array::{AsArray as _, RecordBatch};

use crate::error::{Error, Result};
use crate::manifest::{Manifest, SegmentMeta};
use crate::objects::{Objects, ObjectsError};
use crate::segment::{Builders, DecodeError, Kind, SegmentError, from_parquet};

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
    pub(crate) pending: Pending,
    /// The records a flush is writing: still served from memory until their segment is listed.
    pub(crate) flushing: Option<Arc<Vec<RecordBatch>>>,
    /// The offset of the first message read (where the first segment starts when nothing is durable).
    pub(crate) first_read: Option<i64>,
    /// One past the offset of the last message read.
    pub(crate) next_read: Option<i64>,
    /// Where reading was positioned: a message before it is a leftover of an earlier position.
    pub(crate) resume_from: Option<i64>,
    /// A segment written from the manifest's end before a crash and never listed ends here: the replay
    /// cuts its first segment at the same offset, so it rewrites that object instead of adding another.
    pub(crate) cut_at: Option<i64>,
    /// When the replay gives up waiting to reach `cut_at`.
    pub(crate) cut_deadline: std::time::Instant,
    /// The segments found unlisted at the take-over, from where reading resumed.
    pub(crate) unlisted: Vec<String>,
    /// Each tier's manifest, in the order of `Table::tiers`.
    pub(crate) tiers: Vec<Arc<Manifest>>,
}

/// Most rows of one record batch in memory: a query reads memory a batch at a time.
const CHUNK_ROWS: usize = 8_192;

/// Records not yet durable, decoded into columns as they arrive: sealed record batches, then the rows
/// still being built.
#[derive(Debug)]
pub(crate) struct Pending {
    chunks: Vec<RecordBatch>,
    building: Builders,
    rows: usize,
}

impl Pending {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { chunks: Vec::new(), building: kind.builders(), rows: 0 }
    }

    /// Appends the record of the message at `offset`; a message that is not one is refused.
    pub(crate) fn push(&mut self, payload: Option<&[u8]>, partition: i32, offset: i64) -> Result<(), DecodeError> {
        self.building.append(payload, partition, offset)?;
        self.rows += 1;
        if self.building.len() >= CHUNK_ROWS {
            self.seal();
        }
        Ok(())
    }

    /// Rows held.
    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    /// Turns the rows being built into a record batch, so that they can be read.
    fn seal(&mut self) {
        if self.building.is_empty() {
            return;
        }
        match self.building.finish() {
            Ok(batch) => self.chunks.push(batch),
            // The builders' columns always agree with their schema.
            Err(err) => unreachable!("pending rows do not form a batch: {err}"),
        }
    }

    /// Every row, as record batches.
    pub(crate) fn batches(&mut self) -> &[RecordBatch] {
        self.seal();
        &self.chunks
    }

    /// Takes the rows at offsets before `cut`.
    pub(crate) fn take_before(&mut self, cut: i64) -> Result<Vec<RecordBatch>, SegmentError> {
        self.seal();
        let mut taken = Vec::new();
        let mut rest = Vec::new();
        for chunk in self.chunks.drain(..) {
            let offsets = chunk
                .column_by_name("kafka_offset")
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
                .ok_or(SegmentError::Column("kafka_offset"))?;
            let split = offsets.values().partition_point(|&offset| offset < cut);
            if split > 0 {
                taken.push(chunk.slice(0, split));
            }
            if split < chunk.num_rows() {
                rest.push(chunk.slice(split, chunk.num_rows() - split));
            }
        }
        self.chunks = rest;
        self.rows -= taken.iter().map(RecordBatch::num_rows).sum::<usize>();
        Ok(taken)
    }

    /// Puts back rows taken by `take_before` (a flush that failed), ahead of those read since.
    pub(crate) fn put_back(&mut self, batches: Vec<RecordBatch>) {
        self.rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        let later = std::mem::replace(&mut self.chunks, batches);
        self.chunks.extend(later);
    }
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
    /// Raw segments, and the rows in memory not yet durable.
    pub(crate) segments: Vec<Arc<RecordBatch>>,
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
    pub(crate) record: Kind,
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
    /// Held while a manifest is published: a flush and upkeep publish concurrently, in turns.
    publishing: tokio::sync::Mutex<()>,
}

/// A manifest and the name of the version it was read from.
type Versioned = (String, Arc<Manifest>);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is still consistent (every update
    // is a single assignment or push), so the poison is ignored.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Table {
    pub(crate) fn new(record: Kind, topic: String, partitions: i32, objects: Objects, tiers: Vec<Tier>, cache_budget: usize) -> Self {
        Self {
            kind: record.name().to_owned(),
            record,
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
            publishing: tokio::sync::Mutex::new(()),
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
            let mut owned = lock(&self.owned);
            for state in owned.values_mut() {
                take(&state.manifest, tier.and_then(|t| state.tiers.get(t)).map(Arc::as_ref));
                // Record batches share their columns: taking memory's batches copies no rows.
                let flushing = state.flushing.iter().flat_map(|f| f.iter());
                let memory: Vec<RecordBatch> = flushing.chain(state.pending.batches()).cloned().collect();
                snapshot.segments.extend(memory.into_iter().map(Arc::new));
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
        let record = self.record;
        let batch = tokio::task::spawn_blocking(move || -> Result<RecordBatch> {
            let batches = from_parquet(bytes)?;
            Ok(crate::segment::concat(record, &batches)?)
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

    /// Publishes the next version of kind `kind` (0 raw, t + 1 tier t) of a partition this instance owns
    /// under `generation`: `change` applied to the version it holds now (`None` from `change`: nothing
    /// to publish), then applies `update` to the partition's state. Returns whether it published; not
    /// when the partition is no longer owned under `generation`. When another instance published that
    /// version first, this one has lost the partition: its state is dropped and `Fenced` returned.
    ///
    /// The publishers of a table take turns, so a flush listing a segment and upkeep compacting others
    /// in the same partition each change the version the other published, never the same one.
    pub(crate) async fn publish(
        &self,
        kind: usize,
        partition: i32,
        generation: u64,
        change: impl FnOnce(&Manifest) -> Result<Option<Manifest>>,
        update: impl FnOnce(&mut Owned),
    ) -> Result<bool> {
        let _turn = self.publishing.lock().await;
        let current = {
            let owned = lock(&self.owned);
            let Some(state) = owned.get(&partition).filter(|s| s.generation == generation) else { return Ok(false) };
            match kind.checked_sub(1) {
                None => Arc::clone(&state.manifest),
                Some(t) => Arc::clone(state.tiers.get(t).ok_or_else(|| Error::Internal(format!("no tier {t}")))?),
            }
        };
        let Some(manifest) = change(&current)? else { return Ok(false) };
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
        Ok(true)
    }

    /// Rows held in memory, not yet durable.
    pub(crate) fn pending_rows(&self) -> usize {
        let flushing = |f: &Arc<Vec<RecordBatch>>| f.iter().map(RecordBatch::num_rows).sum::<usize>();
        lock(&self.owned).values().map(|o| o.pending.len() + o.flushing.as_ref().map_or(0, flushing)).sum()
    }
}

#[cfg(test)]
mod tests {
    use proto::prost::Message as _;
    use proto::v1::Point;

    use super::*;

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        let column = |b: &RecordBatch| b.column_by_name("kafka_offset").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        batches.iter().flat_map(column).collect()
    }

    #[test]
    fn pending_rows_split_at_a_cut_and_go_back_in_order() {
        let mut pending = Pending::new(Kind::Points);
        let payload = Point { metric: "m".into(), ..Point::default() }.encode_to_vec();
        // Two sealed chunks and some rows still being built.
        let total = 2 * CHUNK_ROWS as i64 + 5;
        for offset in 0..total {
            pending.push(Some(&payload), 0, offset).unwrap();
        }
        assert_eq!(pending.len(), total as usize);
        let cut = CHUNK_ROWS as i64 + 3;
        let taken = pending.take_before(cut).unwrap();
        assert_eq!(offsets(&taken), (0..cut).collect::<Vec<_>>());
        assert_eq!(pending.len(), (total - cut) as usize);
        assert_eq!(offsets(pending.batches()), (cut..total).collect::<Vec<_>>());
        pending.push(Some(&payload), 0, total).unwrap();
        pending.put_back(taken);
        assert_eq!(pending.len(), total as usize + 1);
        assert_eq!(offsets(pending.batches()), (0..=total).collect::<Vec<_>>());
        assert!(pending.take_before(0).unwrap().is_empty(), "nothing before the first");
    }
}
