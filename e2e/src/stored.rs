//! What a store has made durable, read straight from its object store folder: the rows its manifests
//! list, the segment objects present (listed or not), and any break in a manifest's offset chain.

use std::collections::BTreeSet;
use std::path::Path;

use store::objects::Objects;
use store::segment::{batch_to_aggregates, from_parquet};

use crate::verify::{Observed, Reading};

/// The store's durable content for one topic.
#[derive(Debug, Default)]
pub struct Stored {
    /// Every row the manifests list, with the partition and offset it was read at.
    pub reading: Reading,
    /// The segment objects the manifests list.
    pub listed: BTreeSet<String>,
    /// Every segment object in the folder.
    pub objects: BTreeSet<String>,
    /// Segments that do not start where the one before them ended.
    pub gaps: Vec<String>,
}

/// Reads the manifests of `partitions` partitions of `topic` in the store folder `path`, and every
/// segment they list.
pub async fn stored(path: &Path, topic: &str, partitions: i32) -> Stored {
    let objects = Objects::local(path).expect("the store folder opens");
    let mut stored = Stored::default();
    for partition in 0..partitions {
        let manifest = objects.latest_manifest("aggregates", topic, partition).await.expect("a readable manifest");
        let mut end = None;
        for segment in &manifest.segments {
            if end.is_some_and(|end| end != segment.first_offset) {
                stored.gaps.push(format!("{} after end {end:?}", segment.name));
            }
            end = Some(segment.next_offset);
            stored.listed.insert(segment.name.clone());
            let bytes = objects.get(&segment.name).await.expect("a listed segment exists");
            for batch in from_parquet(bytes).expect("a listed segment is Parquet") {
                for row in batch_to_aggregates(&batch).expect("a listed segment holds aggregates") {
                    let (series, window) = (row.aggregate.series.unwrap_or_default(), row.aggregate.window.unwrap_or_default());
                    let key = (series.key(), window.start_ns);
                    stored.reading.aggregates.push(Observed { key, stats: window, partition: row.partition, offset: row.offset });
                }
            }
        }
        let prefix = format!("aggregates/{topic}/p{partition:05}");
        for name in objects.names_starting(&prefix, "").await.expect("the segment folder lists") {
            if name.ends_with(".parquet") {
                stored.objects.insert(name);
            }
        }
    }
    stored
}
