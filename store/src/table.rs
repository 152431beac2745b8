//! One kind of data (today the aggregates) as a query reads it: the segments each partition's manifest
//! lists in the shared object store, plus the rows this instance has read from Kafka and not yet made
//! durable. Every record is read once: a partition this instance ingests is read from its own manifest
//! and memory under one lock (rows leave memory in the same step that lists their segment), any other
//! partition from its latest published manifest.

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

/// A partition this instance ingests.
#[derive(Debug)]
pub(crate) struct Owned {
    /// Distinguishes this ownership from an earlier or later one of the same partition, so that a flush
    /// that outlived a handover changes nothing.
    pub(crate) generation: u64,
    pub(crate) manifest: Arc<Manifest>,
    /// Records read and not yet listed in a segment, in offset order, all at or past the manifest's end.
    pub(crate) rows: Vec<Located>,
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
}

/// What a query reads: every record of the selected time range once (and possibly others).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) segments: Vec<Arc<RecordBatch>>,
    pub(crate) rows: Vec<Located>,
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
    pub(crate) kind: &'static str,
    pub(crate) topic: String,
    partitions: i32,
    pub(crate) objects: Objects,
    pub(crate) owned: Mutex<HashMap<i32, Owned>>,
    generations: AtomicU64,
    /// The latest manifest seen of each partition that another instance writes, by version name.
    manifests: Mutex<HashMap<i32, (String, Arc<Manifest>)>>,
    cache: Mutex<Cache>,
    cache_budget: usize,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data that is still consistent (every update
    // is a single assignment or push), so the poison is ignored.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Table {
    pub(crate) fn new(kind: &'static str, topic: String, partitions: i32, objects: Objects, cache_budget: usize) -> Self {
        Self {
            kind,
            topic,
            partitions,
            objects,
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

    /// The object name prefix of a partition's segments.
    pub(crate) fn segment_prefix(&self, partition: i32) -> String {
        format!("{}/{}/p{partition:05}", self.kind, self.topic)
    }

    /// The records whose time may lie in `[from_ns, to_ns)`, each once.
    pub(crate) async fn snapshot(&self, from_ns: i64, to_ns: i64) -> Result<Snapshot> {
        // A segment listed in a manifest read a moment ago may since have been replaced by a compaction
        // and deleted: reading the newer manifest finds its replacement.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_snapshot(from_ns, to_ns).await {
                Err(Error::Objects(ObjectsError::Store(object_store::Error::NotFound { path, .. }))) if attempts < 3 => {
                    tracing::debug!(%path, "segment replaced while read; reading the manifest again");
                    lock(&self.manifests).clear();
                }
                other => return other,
            }
        }
    }

    async fn try_snapshot(&self, from_ns: i64, to_ns: i64) -> Result<Snapshot> {
        let mut listed: Vec<SegmentMeta> = Vec::new();
        let mut snapshot = Snapshot::default();
        let owned: Vec<i32> = {
            let owned = lock(&self.owned);
            for state in owned.values() {
                listed.extend(state.manifest.overlapping(from_ns, to_ns).cloned());
                snapshot.rows.extend(state.rows.iter().cloned());
            }
            owned.keys().copied().collect()
        };
        for partition in (0..self.partitions).filter(|p| !owned.contains(p)) {
            listed.extend(self.manifest(partition).await?.overlapping(from_ns, to_ns).cloned());
        }
        for segment in &listed {
            snapshot.segments.push(self.segment(segment).await?);
        }
        Ok(snapshot)
    }

    /// The latest published manifest of a partition another instance writes.
    async fn manifest(&self, partition: i32) -> Result<Arc<Manifest>> {
        let Some(name) = self.objects.latest_manifest_name(self.kind, &self.topic, partition).await? else {
            return Ok(Arc::default());
        };
        if let Some((cached, manifest)) = lock(&self.manifests).get(&partition)
            && *cached == name
        {
            return Ok(Arc::clone(manifest));
        }
        let manifest = match self.objects.read_manifest(&name).await? {
            Some(manifest) => Arc::new(manifest),
            // Superseded and pruned since it was listed: the next listing has its successor.
            None => Arc::new(self.objects.latest_manifest(self.kind, &self.topic, partition).await?),
        };
        lock(&self.manifests).insert(partition, (name, Arc::clone(&manifest)));
        Ok(manifest)
    }

    /// A segment's rows as one record batch.
    async fn segment(&self, segment: &SegmentMeta) -> Result<Arc<RecordBatch>> {
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

    /// Rows held in memory, not yet durable.
    pub(crate) fn pending_rows(&self) -> usize {
        lock(&self.owned).values().map(|o| o.rows.len()).sum()
    }
}
