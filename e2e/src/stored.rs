//! What a store has made durable, read straight from its object store folder: the rows its manifests
//! list, the segment objects present (listed or not), and any break in a manifest's offset chain.

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::AsArray as _;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use store::Kind;
use store::objects::Objects;
use store::segment::{batch_to_aggregates, from_parquet};

use crate::verify::{Observed, Reading};

/// The store's durable content for one topic.
#[derive(Debug, Default)]
pub struct Stored {
    /// Every window the manifests list, with the partition and offset it was read at (aggregates).
    pub reading: Reading,
    /// Every point the manifests list (points).
    pub points: Vec<StoredPoint>,
    /// The segment objects the manifests list.
    pub listed: BTreeSet<String>,
    /// Every segment object in the folder.
    pub objects: BTreeSet<String>,
    /// Segments that do not start where the one before them ended.
    pub gaps: Vec<String>,
}

/// A row of the points table.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub partition: i32,
    pub offset: i64,
    pub series: String,
    pub time_ns: i64,
    pub value: f64,
}

/// Reads the manifests of `partitions` partitions of `topic` (the table of `kind`) in the store folder
/// `path`, and every segment they list.
pub async fn stored(path: &Path, kind: Kind, topic: &str, partitions: i32) -> Stored {
    stored_in(&Objects::local(path).expect("the store folder opens"), kind, topic, partitions).await
}

/// [`stored`] from any object store.
pub async fn stored_in(objects: &Objects, kind: Kind, topic: &str, partitions: i32) -> Stored {
    let mut stored = Stored::default();
    for partition in 0..partitions {
        let manifest = objects.latest_manifest(kind.name(), topic, partition).await.expect("a readable manifest");
        let mut end = None;
        for segment in &manifest.segments {
            if end.is_some_and(|end| end != segment.first_offset) {
                stored.gaps.push(format!("{} after end {end:?}", segment.name));
            }
            end = Some(segment.next_offset);
            stored.listed.insert(segment.name.clone());
            let bytes = objects.get(&segment.name).await.expect("a listed segment exists");
            for batch in from_parquet(bytes).expect("a listed segment is Parquet") {
                if kind == Kind::Points {
                    let column = |name: &str| batch.column_by_name(name).expect("a points column").clone();
                    let (series, time, value) = (column("series"), column("time_ns"), column("value"));
                    let (partitions, offsets) = (column("kafka_partition"), column("kafka_offset"));
                    for i in 0..batch.num_rows() {
                        stored.points.push(StoredPoint {
                            partition: partitions.as_primitive::<Int32Type>().value(i),
                            offset: offsets.as_primitive::<Int64Type>().value(i),
                            series: series.as_string::<i32>().value(i).to_owned(),
                            time_ns: time.as_primitive::<Int64Type>().value(i),
                            value: value.as_primitive::<Float64Type>().value(i),
                        });
                    }
                    continue;
                }
                for row in batch_to_aggregates(&batch).expect("a listed segment holds aggregates") {
                    let (series, window) = (row.aggregate.series.unwrap_or_default(), row.aggregate.window.unwrap_or_default());
                    let key = (series.key(), window.start_ns);
                    stored.reading.aggregates.push(Observed { key, stats: window, partition: row.partition, offset: row.offset });
                }
            }
        }
        let prefix = format!("{}/{topic}/p{partition:05}", kind.name());
        for name in objects.names_starting(&prefix, "").await.expect("the segment folder lists") {
            if name.ends_with(".parquet") {
                stored.objects.insert(name);
            }
        }
    }
    stored
}
