//! The columnar form of the store's data, with no IO: aggregates as Arrow record batches and Parquet
//! bytes, and back, exactly; and the names of segments.
//!
//! A segment holds the records of one offset range of one Kafka partition and is named by that range.
//! Records at an offset never change, and the conversion is deterministic, so a segment's content is a
//! function of its name: a replay after a crash (or a fenced former owner) that writes the same range
//! writes the same records under the same name, never a second copy. Every row keeps the partition
//! and offset it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray as _, BinaryBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, MapBuilder,
    RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, UInt64Type};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use proto::v1::{Aggregate, Moments, Quantile, Series, WindowStats};

use crate::manifest::SegmentMeta;

/// An aggregate as read from Kafka: where it came from, and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub partition: i32,
    pub offset: i64,
    pub aggregate: Aggregate,
}

/// Why bytes or a batch are not a segment of aggregates.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("column {0} is missing or of another type")]
    Column(&'static str),
}

/// The object name of the segment of `partition` of `topic` holding offsets `[first_offset,
/// next_offset)`: `<kind>/<topic>/p<partition>/<first>-<next>.parquet`, 20 digits each, so names sort
/// by offset.
pub fn segment_name(kind: &str, topic: &str, partition: i32, first_offset: i64, next_offset: i64) -> String {
    format!("{kind}/{topic}/p{partition:05}/{first_offset:020}-{next_offset:020}.parquet")
}

/// The aggregates table's columns, in order.
pub const AGGREGATE_COLUMNS: [&str; 27] = [
    "series", "metric", "tags", "start_ns", "end_ns", "count", "sum", "mean", "min", "max", "gradient_per_second",
    "first", "last", "first_ns", "last_ns", "stddev", "rate_per_second", "quantile_q", "quantile_value", "sketch",
    "sketch_relative_accuracy", "moments_origin_ns", "moments_mean_t", "moments_mean_v", "moments_m2_t", "moments_m2_v",
    "moments_c_tv",
];

/// The provenance columns every table ends with.
pub const PROVENANCE_COLUMNS: [&str; 2] = ["kafka_partition", "kafka_offset"];

/// Builders for every column of the aggregates table.
struct AggregateBuilders {
    series: StringBuilder,
    metric: StringBuilder,
    tags: MapBuilder<StringBuilder, StringBuilder>,
    i64s: [Int64Builder; 5],
    count: UInt64Builder,
    f64s: [Float64Builder; 15],
    quantile_q: ListBuilder<Float64Builder>,
    quantile_value: ListBuilder<Float64Builder>,
    sketch: BinaryBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
}

impl AggregateBuilders {
    fn new() -> Self {
        Self {
            series: StringBuilder::new(),
            metric: StringBuilder::new(),
            tags: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            i64s: std::array::from_fn(|_| Int64Builder::new()),
            count: UInt64Builder::new(),
            f64s: std::array::from_fn(|_| Float64Builder::new()),
            quantile_q: ListBuilder::new(Float64Builder::new()),
            quantile_value: ListBuilder::new(Float64Builder::new()),
            sketch: BinaryBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
        }
    }

    fn append(&mut self, row: &Located) -> Result<(), SegmentError> {
        let series = row.aggregate.series.clone().unwrap_or_default();
        let w = row.aggregate.window.clone().unwrap_or_default();
        let m = w.moments.unwrap_or_default();
        self.series.append_value(series.key());
        self.metric.append_value(&series.metric);
        for (k, v) in &series.tags {
            self.tags.keys().append_value(k);
            self.tags.values().append_value(v);
        }
        self.tags.append(true)?;
        // start_ns, end_ns, first_ns, last_ns, moments_origin_ns
        for (builder, value) in self.i64s.iter_mut().zip([w.start_ns, w.end_ns, w.first_ns, w.last_ns, m.origin_ns]) {
            builder.append_value(value);
        }
        self.count.append_value(w.count);
        let f64s = [
            Some(w.sum),
            Some(w.mean),
            Some(w.min),
            Some(w.max),
            w.gradient_per_second,
            Some(w.first),
            Some(w.last),
            w.stddev,
            w.rate_per_second,
            Some(w.sketch_relative_accuracy),
            Some(m.mean_t),
            Some(m.mean_v),
            Some(m.m2_t),
            Some(m.m2_v),
            Some(m.c_tv),
        ];
        for (builder, value) in self.f64s.iter_mut().zip(f64s) {
            builder.append_option(value);
        }
        self.quantile_q.append_value(w.quantiles.iter().map(|q| Some(q.q)));
        self.quantile_value.append_value(w.quantiles.iter().map(|q| Some(q.value)));
        self.sketch.append_value(&w.sketch);
        self.partition.append_value(row.partition);
        self.offset.append_value(row.offset);
        Ok(())
    }
}

/// Rows as one record batch of the aggregates table.
pub fn aggregates_to_batch(rows: &[Located]) -> Result<RecordBatch, SegmentError> {
    let mut b = AggregateBuilders::new();
    for row in rows {
        b.append(row)?;
    }
    let [start, end, first_ns, last_ns, origin] = b.i64s.map(|mut x| Arc::new(x.finish()) as ArrayRef);
    let [sum, mean, min, max, gradient, first, last, stddev, rate, accuracy, mean_t, mean_v, m2_t, m2_v, c_tv] =
        b.f64s.map(|mut x| Arc::new(x.finish()) as ArrayRef);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(b.series.finish()),
        Arc::new(b.metric.finish()),
        Arc::new(b.tags.finish()),
        start,
        end,
        Arc::new(b.count.finish()),
        sum,
        mean,
        min,
        max,
        gradient,
        first,
        last,
        first_ns,
        last_ns,
        stddev,
        rate,
        Arc::new(b.quantile_q.finish()),
        Arc::new(b.quantile_value.finish()),
        Arc::new(b.sketch.finish()),
        accuracy,
        origin,
        mean_t,
        mean_v,
        m2_t,
        m2_v,
        c_tv,
        Arc::new(b.partition.finish()),
        Arc::new(b.offset.finish()),
    ];
    let names = AGGREGATE_COLUMNS.iter().chain(PROVENANCE_COLUMNS.iter());
    let fields: Vec<Field> = names
        .zip(&columns)
        .map(|(name, column)| Field::new(*name, column.data_type().clone(), OPTIONAL.contains(name)))
        .collect();
    Ok(RecordBatch::try_new(SchemaRef::new(Schema::new(fields)), columns)?)
}

/// The columns that may be null: statistics that are undefined for some windows.
const OPTIONAL: [&str; 3] = ["gradient_per_second", "stddev", "rate_per_second"];

/// The aggregates table's schema.
pub fn aggregates_schema() -> SchemaRef {
    // An empty batch builds every column, so the schema is the builders' own.
    aggregates_to_batch(&[]).map(|batch| batch.schema()).unwrap_or_else(|_| unreachable!("an empty batch always builds"))
}

/// The rows of a record batch of the aggregates table.
pub fn batch_to_aggregates(batch: &RecordBatch) -> Result<Vec<Located>, SegmentError> {
    let string = |name: &'static str| batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or(SegmentError::Column(name));
    let i64s = |name: &'static str| batch.column_by_name(name).and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or(SegmentError::Column(name));
    let f64s = |name: &'static str| batch.column_by_name(name).and_then(|c| c.as_primitive_opt::<Float64Type>()).ok_or(SegmentError::Column(name));
    let lists = |name: &'static str| batch.column_by_name(name).and_then(|c| c.as_list_opt::<i32>()).ok_or(SegmentError::Column(name));
    let metric = string("metric")?;
    let tags = batch.column_by_name("tags").and_then(|c| c.as_map_opt()).ok_or(SegmentError::Column("tags"))?;
    let count = batch.column_by_name("count").and_then(|c| c.as_primitive_opt::<UInt64Type>()).ok_or(SegmentError::Column("count"))?;
    let sketch = batch.column_by_name("sketch").and_then(|c| c.as_binary_opt::<i32>()).ok_or(SegmentError::Column("sketch"))?;
    let partition = batch.column_by_name("kafka_partition").and_then(|c| c.as_primitive_opt::<Int32Type>()).ok_or(SegmentError::Column("kafka_partition"))?;
    let (start, end, first_ns, last_ns) = (i64s("start_ns")?, i64s("end_ns")?, i64s("first_ns")?, i64s("last_ns")?);
    let (origin, offset) = (i64s("moments_origin_ns")?, i64s("kafka_offset")?);
    let (sum, mean, min, max) = (f64s("sum")?, f64s("mean")?, f64s("min")?, f64s("max")?);
    let (gradient, first, last, stddev, rate) = (f64s("gradient_per_second")?, f64s("first")?, f64s("last")?, f64s("stddev")?, f64s("rate_per_second")?);
    let accuracy = f64s("sketch_relative_accuracy")?;
    let (mean_t, mean_v, m2_t, m2_v, c_tv) = (f64s("moments_mean_t")?, f64s("moments_mean_v")?, f64s("moments_m2_t")?, f64s("moments_m2_v")?, f64s("moments_c_tv")?);
    let (quantile_q, quantile_value) = (lists("quantile_q")?, lists("quantile_value")?);
    let optional = |column: &arrow::array::Float64Array, i: usize| column.is_valid(i).then(|| column.value(i));
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let entries = tags.value(i);
        let (keys, values) = (entries.column(0).as_string::<i32>(), entries.column(1).as_string::<i32>());
        let tags: BTreeMap<String, String> =
            (0..keys.len()).map(|j| (keys.value(j).to_owned(), values.value(j).to_owned())).collect();
        let (qs, vs) = (quantile_q.value(i), quantile_value.value(i));
        let (qs, vs) = (qs.as_primitive::<Float64Type>(), vs.as_primitive::<Float64Type>());
        let quantiles = (0..qs.len()).map(|j| Quantile { q: qs.value(j), value: vs.value(j) }).collect();
        let window = WindowStats {
            start_ns: start.value(i),
            end_ns: end.value(i),
            count: count.value(i),
            sum: sum.value(i),
            mean: mean.value(i),
            min: min.value(i),
            max: max.value(i),
            gradient_per_second: optional(gradient, i),
            first: first.value(i),
            last: last.value(i),
            first_ns: first_ns.value(i),
            last_ns: last_ns.value(i),
            stddev: optional(stddev, i),
            rate_per_second: optional(rate, i),
            quantiles,
            sketch: sketch.value(i).to_vec(),
            sketch_relative_accuracy: accuracy.value(i),
            moments: Some(Moments {
                origin_ns: origin.value(i),
                mean_t: mean_t.value(i),
                mean_v: mean_v.value(i),
                m2_t: m2_t.value(i),
                m2_v: m2_v.value(i),
                c_tv: c_tv.value(i),
            }),
        };
        let series = Series { metric: metric.value(i).to_owned(), tags };
        rows.push(Located { partition: partition.value(i), offset: offset.value(i), aggregate: Aggregate { series: Some(series), window: Some(window) } });
    }
    Ok(rows)
}

/// A segment's Parquet bytes: one row group, zstd, with statistics per column (so a reader skips
/// segments and pages outside a time range).
pub fn to_parquet(batch: &RecordBatch) -> Result<Bytes, SegmentError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(None)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    writer.write(batch)?;
    Ok(Bytes::from(writer.into_inner()?))
}

/// The record batches of a segment's Parquet bytes.
pub fn from_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, SegmentError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// `rows` (of `partition`, in offset order; possibly none, when every message was malformed) as the segment of offsets `[first_offset,
/// next_offset)`: its Parquet bytes and listing. `first_offset` is where the partition's last segment
/// ended (or where reading began), so consecutive segments leave no gap for a reader to wonder about.
pub fn encode_segment(
    rows: &[Located],
    partition: i32,
    kind: &str,
    topic: &str,
    first_offset: i64,
    next_offset: i64,
) -> Result<(Bytes, SegmentMeta), SegmentError> {
    let bytes = to_parquet(&aggregates_to_batch(rows)?)?;
    let starts = rows.iter().filter_map(|r| r.aggregate.window.as_ref().map(|w| w.start_ns));
    let (min_time_ns, max_time_ns) = starts.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let meta = SegmentMeta {
        name: segment_name(kind, topic, partition, first_offset, next_offset),
        first_offset,
        next_offset,
        rows: rows.len() as u64,
        bytes: bytes.len() as u64,
        min_time_ns,
        max_time_ns,
    };
    Ok((bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(partition: i32, offset: i64, metric: &str, tags: &[(&str, &str)], start: i64, optional: bool) -> Located {
        let series = Series { metric: metric.to_owned(), tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        let window = WindowStats {
            start_ns: start,
            end_ns: start + 10,
            count: 3,
            sum: 6.5,
            mean: 6.5 / 3.0,
            min: -1.25,
            max: 7.0,
            gradient_per_second: optional.then_some(0.1 + 0.2),
            first: 1.0,
            last: 7.0,
            first_ns: start + 1,
            last_ns: start + 9,
            stddev: optional.then_some(f64::MIN_POSITIVE),
            rate_per_second: optional.then_some(-3.0e300),
            quantiles: if optional { vec![Quantile { q: 0.5, value: 1.0 }, Quantile { q: 0.99, value: 7.0 }] } else { vec![] },
            sketch: vec![1, 2, 3, offset as u8],
            sketch_relative_accuracy: 0.01,
            moments: Some(Moments { origin_ns: start, mean_t: 0.5, mean_v: 2.1, m2_t: 3.3, m2_v: 4.4, c_tv: -5.5 }),
        };
        Located { partition, offset, aggregate: Aggregate { series: Some(series), window: Some(window) } }
    }

    #[test]
    fn aggregates_round_trip_through_parquet_exactly() {
        let rows = vec![
            located(0, 7, "cpu", &[("host", "a"), ("zone", "eu\"1")], 1_000, true),
            located(0, 8, "cpu", &[], -20, false),
            located(3, 1 << 40, "mem", &[("host", "é")], i64::MAX / 4, true),
        ];
        let batch = aggregates_to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), aggregates_schema());
        assert_eq!(batch_to_aggregates(&batch).unwrap(), rows);
        let read = from_parquet(to_parquet(&batch).unwrap()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(batch_to_aggregates(&read[0]).unwrap(), rows);
        let series = read[0].column_by_name("series").unwrap().as_string::<i32>().value(0).to_owned();
        assert_eq!(series, r#"cpu{host="a",zone="eu\"1"}"#);
    }

    #[test]
    fn rows_become_a_segment_of_their_offset_range() {
        let rows: Vec<Located> = [(5, 300), (7, 100), (8, 200)].iter().map(|&(offset, start)| located(2, offset, "m", &[], start, false)).collect();
        let (bytes, meta) = encode_segment(&rows, 2, "aggregates", "t", 4, 9).unwrap();
        assert_eq!(
            meta,
            SegmentMeta {
                name: segment_name("aggregates", "t", 2, 4, 9),
                first_offset: 4,
                next_offset: 9,
                rows: 3,
                bytes: bytes.len() as u64,
                min_time_ns: 100,
                max_time_ns: 300,
            }
        );
        let read = batch_to_aggregates(&from_parquet(bytes.clone()).unwrap()[0]).unwrap();
        assert_eq!(read, rows);
        assert_eq!(encode_segment(&rows, 2, "aggregates", "t", 4, 9).unwrap().0, bytes, "the same rows give the same bytes");
    }

    #[test]
    fn segment_names_sort_by_offset() {
        assert_eq!(
            segment_name("aggregates", "runnel.aggregates.v1", 3, 42, 50),
            "aggregates/runnel.aggregates.v1/p00003/00000000000000000042-00000000000000000050.parquet"
        );
        let (a, b) = (segment_name("a", "t", 1, 999, 1000), segment_name("a", "t", 1, 1000, 1001));
        assert!(a < b);
    }

    #[test]
    fn a_batch_without_a_column_is_named() {
        let rows = [located(0, 1, "m", &[], 0, true)];
        let batch = aggregates_to_batch(&rows).unwrap();
        let without = batch.project(&(1..batch.num_columns()).collect::<Vec<_>>()).unwrap();
        assert_eq!(batch_to_aggregates(&without).unwrap(), rows, "the series key is derived, not read");
        let index = batch.schema().index_of("count").unwrap();
        let without: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != index).collect();
        let err = batch_to_aggregates(&batch.project(&without).unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "column count is missing or of another type");
    }
}
