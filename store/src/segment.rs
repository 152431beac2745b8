//! The columnar form of the store's data, with no IO: points, aggregates and alerts decoded from their
//! messages straight into Arrow columns, Parquet bytes and back (aggregates exactly, to rows again),
//! and the names of segments.
//!
//! A segment holds the records of one offset range of one Kafka partition and is named by that range.
//! Records at an offset never change, and the conversion is deterministic, so a segment's content is a
//! function of its name: a replay after a crash (or a fenced former owner) that writes the same range
//! writes the same records under the same name, never a second copy. Every row keeps the partition
//! and offset it came from.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder as _, ArrayRef, AsArray as _, BinaryArray, BinaryBuilder, Float64Array, Float64Builder, Int32Array,
    Int32Builder, Int64Array, Int64Builder, ListArray, ListBuilder, MapArray, MapBuilder, RecordBatch, StringArray,
    StringBuilder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{Field, Float64Type, Int64Type, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use proto::prost::Message as _;
use proto::v1::{Aggregate, Alert, AlertState, Moments, Quantile, Series, WindowStats};

use crate::manifest::SegmentMeta;
use crate::wire::WindowView;

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

/// The kinds of data the store keeps, each from a topic of its own into a table of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Raw points, as the collector wrote them.
    Points,
    /// The processor's closed windows.
    Aggregates,
    /// The analyzer's alert state changes.
    Alerts,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Points, Kind::Aggregates, Kind::Alerts];

    /// Its object name prefix and SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Points => "points",
            Kind::Aggregates => "aggregates",
            Kind::Alerts => "alerts",
        }
    }

    /// The event-time column: segments record its bounds, retention and time filters use it.
    pub fn time_column(self) -> &'static str {
        match self {
            Kind::Points => "time_ns",
            Kind::Aggregates => "start_ns",
            // The end of the window that changed the alert's state.
            Kind::Alerts => "window_end_ns",
        }
    }

    /// Empty builders of its table's columns.
    pub fn builders(self) -> Builders {
        match self {
            Kind::Points => Builders::Points(Box::default()),
            Kind::Aggregates => Builders::Aggregates(Box::new(AggregateBuilders::new())),
            Kind::Alerts => Builders::Alerts(Box::default()),
        }
    }

    /// Its table's schema.
    pub fn schema(self) -> SchemaRef {
        // An empty batch builds every column, so the schema is the builders' own.
        self.builders().finish().map(|batch| batch.schema()).unwrap_or_else(|_| unreachable!("an empty batch always builds"))
    }
}

/// Why a message is not a record of its topic's kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no payload")]
    Empty,
    #[error("{0}")]
    Protobuf(#[from] proto::prost::DecodeError),
    #[error("{0}")]
    Wire(#[from] crate::wire::WireError),
}

/// A table's rows under construction: messages decoded straight into columns.
#[derive(Debug)]
pub enum Builders {
    Points(Box<PointBuilders>),
    Aggregates(Box<AggregateBuilders>),
    Alerts(Box<AlertBuilders>),
}

impl Builders {
    /// Appends the record a message at `offset` of `partition` carries.
    pub fn append(&mut self, payload: Option<&[u8]>, partition: i32, offset: i64) -> Result<(), DecodeError> {
        let payload = payload.ok_or(DecodeError::Empty)?;
        match self {
            Builders::Points(b) => b.append(payload, partition, offset)?,
            Builders::Aggregates(b) => {
                let aggregate = crate::wire::aggregate(payload, &mut b.buffers)?;
                b.append(&aggregate, partition, offset);
                b.buffers.recycle(aggregate);
            }
            Builders::Alerts(b) => b.append(&Alert::decode(payload)?, partition, offset),
        }
        Ok(())
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        match self {
            Builders::Points(b) => b.offset.len(),
            Builders::Aggregates(b) => b.offset.len(),
            Builders::Alerts(b) => b.offset.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows appended since the last `finish`, as a record batch; the builders start again empty.
    pub fn finish(&mut self) -> Result<RecordBatch, SegmentError> {
        match self {
            Builders::Points(b) => b.finish(),
            Builders::Aggregates(b) => b.finish(),
            Builders::Alerts(b) => b.finish(),
        }
    }
}

/// A record batch of `columns` named `names` then the provenance columns; the columns named in
/// `optional` may hold nulls.
fn batch_of(names: &[&str], optional: &[&str], columns: Vec<ArrayRef>) -> Result<RecordBatch, SegmentError> {
    let names = names.iter().chain(PROVENANCE_COLUMNS.iter());
    let fields: Vec<Field> = names
        .zip(&columns)
        .map(|(name, column)| Field::new(*name, column.data_type().clone(), optional.contains(name)))
        .collect();
    Ok(RecordBatch::try_new(SchemaRef::new(Schema::new(fields)), columns)?)
}

/// The points table's columns, in order (then the provenance columns).
pub const POINT_COLUMNS: [&str; 5] = ["series", "metric", "tags", "time_ns", "value"];

/// The series columns of every table: its key, metric and tags.
struct SeriesBuilders {
    series: StringBuilder,
    metric: StringBuilder,
    tags: MapBuilder<StringBuilder, StringBuilder>,
    /// The series key being built, a buffer reused from row to row.
    key: String,
}

impl Default for SeriesBuilders {
    fn default() -> Self {
        Self {
            series: StringBuilder::new(),
            metric: StringBuilder::new(),
            tags: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            key: String::new(),
        }
    }
}

impl std::fmt::Debug for SeriesBuilders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesBuilders").field("rows", &self.series.len()).finish()
    }
}

impl SeriesBuilders {
    /// Appends a series whose `tags` are in key order, each key once.
    fn append<'a>(&mut self, metric: &str, tags: impl Iterator<Item = (&'a str, &'a str)> + Clone) {
        self.key.clear();
        proto::write_series_key(&mut self.key, metric, tags.clone());
        self.series.append_value(&self.key);
        self.metric.append_value(metric);
        for (k, v) in tags {
            self.tags.keys().append_value(k);
            self.tags.values().append_value(v);
        }
        // Appending an entry to a map whose keys and values were just appended cannot fail.
        let _ = self.tags.append(true);
    }

    fn finish(&mut self) -> [ArrayRef; 3] {
        [Arc::new(self.series.finish()), Arc::new(self.metric.finish()), Arc::new(self.tags.finish())]
    }
}

/// The pairs of a tag map, borrowed.
fn str_pairs(tags: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> + Clone {
    tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Builders for every column of the points table.
#[derive(Debug, Default)]
pub struct PointBuilders {
    series: SeriesBuilders,
    time: Int64Builder,
    value: Float64Builder,
    partition: Int32Builder,
    offset: Int64Builder,
    /// The tags of the point being read, a buffer reused from point to point (empty between them).
    tags: Vec<(&'static str, &'static str)>,
}

impl PointBuilders {
    /// Reads a point's message straight into the columns: nothing is allocated per point.
    fn append(&mut self, payload: &[u8], partition: i32, offset: i64) -> Result<(), crate::wire::WireError> {
        let point = crate::wire::point(payload, std::mem::take(&mut self.tags))?;
        self.series.append(point.metric, point.tags.iter().copied());
        self.time.append_value(point.timestamp_ns);
        self.value.append_value(point.value);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.tags = crate::wire::reuse(point.tags);
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, SegmentError> {
        let [series, metric, tags] = self.series.finish();
        let columns: Vec<ArrayRef> = vec![
            series,
            metric,
            tags,
            Arc::new(self.time.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
        ];
        batch_of(&POINT_COLUMNS, &[], columns)
    }
}

/// The alerts table's columns, in order (then the provenance columns).
pub const ALERT_COLUMNS: [&str; 10] =
    ["id", "rule", "series", "metric", "tags", "state", "value", "threshold", "window_start_ns", "window_end_ns"];

/// Builders for every column of the alerts table.
#[derive(Debug, Default)]
pub struct AlertBuilders {
    id: StringBuilder,
    rule: StringBuilder,
    series: SeriesBuilders,
    state: StringBuilder,
    f64s: [Float64Builder; 2],
    i64s: [Int64Builder; 2],
    partition: Int32Builder,
    offset: Int64Builder,
}

/// An alert state as the alerts table spells it: `pending`, `firing`, `resolved`, `inactive`,
/// `no_data`, `unspecified`, or `unknown(<n>)` for a state this build does not know.
fn state_name(state: i32) -> String {
    match AlertState::try_from(state) {
        Ok(known) => known.as_str_name().trim_start_matches("ALERT_STATE_").to_ascii_lowercase(),
        Err(_) => format!("unknown({state})"),
    }
}

impl AlertBuilders {
    fn append(&mut self, alert: &Alert, partition: i32, offset: i64) {
        let empty = Series::default();
        let series = alert.series.as_ref().unwrap_or(&empty);
        self.id.append_value(&alert.id);
        self.rule.append_value(&alert.rule);
        self.series.append(&series.metric, str_pairs(&series.tags));
        self.state.append_value(state_name(alert.state));
        for (builder, value) in self.f64s.iter_mut().zip([alert.value, alert.threshold]) {
            builder.append_value(value);
        }
        for (builder, value) in self.i64s.iter_mut().zip([alert.window_start_ns, alert.window_end_ns]) {
            builder.append_value(value);
        }
        self.partition.append_value(partition);
        self.offset.append_value(offset);
    }

    fn finish(&mut self) -> Result<RecordBatch, SegmentError> {
        let [series, metric, tags] = self.series.finish();
        let [value, threshold] = self.f64s.each_mut().map(|x| Arc::new(x.finish()) as ArrayRef);
        let [start, end] = self.i64s.each_mut().map(|x| Arc::new(x.finish()) as ArrayRef);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.rule.finish()),
            series,
            metric,
            tags,
            Arc::new(self.state.finish()),
            value,
            threshold,
            start,
            end,
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
        ];
        batch_of(&ALERT_COLUMNS, &[], columns)
    }
}

/// The aggregates table's columns, in order (then the provenance columns).
pub const AGGREGATE_COLUMNS: [&str; 27] = [
    "series", "metric", "tags", "start_ns", "end_ns", "count", "sum", "mean", "min", "max", "gradient_per_second",
    "first", "last", "first_ns", "last_ns", "stddev", "rate_per_second", "quantile_q", "quantile_value", "sketch",
    "sketch_relative_accuracy", "moments_origin_ns", "moments_mean_t", "moments_mean_v", "moments_m2_t", "moments_m2_v",
    "moments_c_tv",
];

/// The provenance columns every table ends with.
pub const PROVENANCE_COLUMNS: [&str; 2] = ["kafka_partition", "kafka_offset"];

/// Builders for every column of the aggregates table.
#[derive(Debug)]
pub struct AggregateBuilders {
    series: SeriesBuilders,
    i64s: [Int64Builder; 5],
    count: UInt64Builder,
    f64s: [Float64Builder; 15],
    quantile_q: ListBuilder<Float64Builder>,
    quantile_value: ListBuilder<Float64Builder>,
    sketch: BinaryBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    /// What reading a message borrows, reused from message to message.
    buffers: crate::wire::Buffers,
}

impl AggregateBuilders {
    pub(crate) fn new() -> Self {
        Self {
            series: SeriesBuilders::default(),
            i64s: std::array::from_fn(|_| Int64Builder::new()),
            count: UInt64Builder::new(),
            f64s: std::array::from_fn(|_| Float64Builder::new()),
            quantile_q: ListBuilder::new(Float64Builder::new()),
            quantile_value: ListBuilder::new(Float64Builder::new()),
            sketch: BinaryBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            buffers: crate::wire::Buffers::default(),
        }
    }

    pub(crate) fn append(&mut self, aggregate: &crate::wire::AggregateView<'_>, partition: i32, offset: i64) {
        let (w, m) = (&aggregate.window, &aggregate.window.moments);
        self.series.append(aggregate.metric, aggregate.tags.iter().copied());
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
        self.quantile_q.append_value(w.quantiles.iter().map(|(q, _)| Some(*q)));
        self.quantile_value.append_value(w.quantiles.iter().map(|(_, value)| Some(*value)));
        self.sketch.append_value(w.sketch);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, SegmentError> {
        let [start, end, first_ns, last_ns, origin] = self.i64s.each_mut().map(|x| Arc::new(x.finish()) as ArrayRef);
        let [sum, mean, min, max, gradient, first, last, stddev, rate, accuracy, mean_t, mean_v, m2_t, m2_v, c_tv] =
            self.f64s.each_mut().map(|x| Arc::new(x.finish()) as ArrayRef);
        let [series, metric, tags] = self.series.finish();
        let columns: Vec<ArrayRef> = vec![
            series,
            metric,
            tags,
            start,
            end,
            Arc::new(self.count.finish()),
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
            Arc::new(self.quantile_q.finish()),
            Arc::new(self.quantile_value.finish()),
            Arc::new(self.sketch.finish()),
            accuracy,
            origin,
            mean_t,
            mean_v,
            m2_t,
            m2_v,
            c_tv,
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
        ];
        batch_of(&AGGREGATE_COLUMNS, &OPTIONAL, columns)
    }
}

/// Rows as one record batch of the aggregates table.
pub fn aggregates_to_batch(rows: &[Located]) -> Result<RecordBatch, SegmentError> {
    let mut b = AggregateBuilders::new();
    for row in rows {
        let mut buffers = std::mem::take(&mut b.buffers);
        let view = buffers.view(&row.aggregate);
        b.append(&view, row.partition, row.offset);
        buffers.recycle(view);
        b.buffers = buffers;
    }
    b.finish()
}

/// The columns that may be null: statistics that are undefined for some windows.
const OPTIONAL: [&str; 3] = ["gradient_per_second", "stddev", "rate_per_second"];

/// The aggregates table's schema.
pub fn aggregates_schema() -> SchemaRef {
    Kind::Aggregates.schema()
}

/// The columns of a record batch of the aggregates table, typed, for reading rows without copying.
#[derive(Debug)]
pub struct AggregateColumns<'a> {
    /// The series keys, when the batch has them (they are derived from the metric and tags).
    series: Option<&'a StringArray>,
    metric: &'a StringArray,
    tags: &'a MapArray,
    tag_keys: &'a StringArray,
    tag_values: &'a StringArray,
    /// start_ns, end_ns, first_ns, last_ns, moments_origin_ns, kafka_offset
    i64s: [&'a Int64Array; 6],
    count: &'a UInt64Array,
    /// sum, mean, min, max, gradient_per_second, first, last, stddev, rate_per_second,
    /// sketch_relative_accuracy, moments_mean_t, moments_mean_v, moments_m2_t, moments_m2_v, moments_c_tv
    f64s: [&'a Float64Array; 15],
    quantile_q: &'a ListArray,
    quantile_value: &'a ListArray,
    sketch: &'a BinaryArray,
    partition: &'a Int32Array,
}

impl<'a> AggregateColumns<'a> {
    /// The columns of `batch`, or the first one missing or of the wrong type.
    pub fn of(batch: &'a RecordBatch) -> Result<Self, SegmentError> {
        fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &'static str) -> Result<&'b T, SegmentError> {
            batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or(SegmentError::Column(name))
        }
        let tags: &MapArray = column(batch, "tags")?;
        let strings = |array: &'a ArrayRef| array.as_string_opt::<i32>().ok_or(SegmentError::Column("tags"));
        let i64s = ["start_ns", "end_ns", "first_ns", "last_ns", "moments_origin_ns", "kafka_offset"];
        let f64s = [
            "sum", "mean", "min", "max", "gradient_per_second", "first", "last", "stddev", "rate_per_second",
            "sketch_relative_accuracy", "moments_mean_t", "moments_mean_v", "moments_m2_t", "moments_m2_v", "moments_c_tv",
        ];
        Ok(Self {
            series: column(batch, "series").ok(),
            metric: column(batch, "metric")?,
            tags,
            tag_keys: strings(tags.keys())?,
            tag_values: strings(tags.values())?,
            i64s: try_map(i64s, |name| column(batch, name))?,
            count: column(batch, "count")?,
            f64s: try_map(f64s, |name| column(batch, name))?,
            quantile_q: column(batch, "quantile_q")?,
            quantile_value: column(batch, "quantile_value")?,
            sketch: column(batch, "sketch")?,
            partition: column(batch, "kafka_partition")?,
        })
    }

    pub fn len(&self) -> usize {
        self.metric.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The series keys.
    pub fn series(&self) -> Result<&'a StringArray, SegmentError> {
        self.series.ok_or(SegmentError::Column("series"))
    }

    pub fn metric(&self, i: usize) -> &'a str {
        self.metric.value(i)
    }

    /// Row `i`'s tags, in key order.
    pub fn tags(&self, i: usize) -> impl Iterator<Item = (&'a str, &'a str)> + Clone + use<'a> {
        let (keys, values) = (self.tag_keys, self.tag_values);
        let offsets = self.tags.value_offsets();
        (offsets[i] as usize..offsets[i + 1] as usize).map(move |j| (keys.value(j), values.value(j)))
    }

    pub fn start_ns(&self, i: usize) -> i64 {
        self.i64s[0].value(i)
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.i64s[5].value(i)
    }

    pub fn partition(&self, i: usize) -> i32 {
        self.partition.value(i)
    }

    /// Row `i`'s reported quantiles: (q, value) pairs.
    pub fn quantiles(&self, i: usize) -> impl Iterator<Item = (f64, f64)> + use<'a> {
        let (qs, values) = (self.quantile_q, self.quantile_value);
        let (q_offsets, v_offsets) = (qs.value_offsets(), values.value_offsets());
        let (q_values, v_values) = (qs.values().as_primitive::<Float64Type>(), values.values().as_primitive::<Float64Type>());
        let (q_from, v_from) = (q_offsets[i] as usize, v_offsets[i] as usize);
        let n = (q_offsets[i + 1] as usize - q_from).min(v_offsets[i + 1] as usize - v_from);
        (0..n).map(move |j| (q_values.value(q_from + j), v_values.value(v_from + j)))
    }

    /// Row `i`'s window, its quantiles left out (see `quantiles`).
    pub fn window(&self, i: usize) -> WindowView<'a> {
        let [start_ns, end_ns, first_ns, last_ns, origin_ns, _] = self.i64s.map(|c| c.value(i));
        let [sum, mean, min, max, _, first, last, _, _, accuracy, mean_t, mean_v, m2_t, m2_v, c_tv] = self.f64s.map(|c| c.value(i));
        let optional = |k: usize| self.f64s[k].is_valid(i).then(|| self.f64s[k].value(i));
        WindowView {
            start_ns,
            end_ns,
            count: self.count.value(i),
            sum,
            mean,
            min,
            max,
            gradient_per_second: optional(4),
            first,
            last,
            first_ns,
            last_ns,
            stddev: optional(7),
            rate_per_second: optional(8),
            quantiles: Vec::new(),
            sketch: self.sketch.value(i),
            sketch_relative_accuracy: accuracy,
            moments: Moments { origin_ns, mean_t, mean_v, m2_t, m2_v, c_tv },
        }
    }
}

/// `names` mapped by a fallible `f`, the first error returned.
fn try_map<T, U, E, const N: usize>(names: [T; N], mut f: impl FnMut(T) -> Result<U, E>) -> Result<[U; N], E> {
    let mut out = Vec::with_capacity(N);
    for name in names {
        out.push(f(name)?);
    }
    Ok(out.try_into().unwrap_or_else(|_| unreachable!("one value per name")))
}

/// The rows of a record batch of the aggregates table.
pub fn batch_to_aggregates(batch: &RecordBatch) -> Result<Vec<Located>, SegmentError> {
    let columns = AggregateColumns::of(batch)?;
    Ok((0..columns.len())
        .map(|i| {
            let view = columns.window(i);
            let window = WindowStats {
                quantiles: columns.quantiles(i).map(|(q, value)| Quantile { q, value }).collect(),
                ..view.to_stats()
            };
            let tags = columns.tags(i).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            let series = Series { metric: columns.metric(i).to_owned(), tags };
            Located { partition: columns.partition(i), offset: columns.offset(i), aggregate: Aggregate { series: Some(series), window: Some(window) } }
        })
        .collect())
}

/// A segment's Parquet bytes: one row group, zstd, with statistics per column (so a reader skips
/// segments and pages outside a time range). Every column may use a dictionary: measured values
/// repeat more than one would think (integers, constants like the sketch accuracy), and the writer
/// falls back to plain encoding where they do not; writing floats plain was 9% faster but 30% larger.
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

/// `batch` (rows of one partition in offset order, possibly none when every message was malformed) as
/// the segment `name` of offsets `[first_offset, next_offset)`: its Parquet bytes and listing, with the
/// bounds of its `time_column`. `first_offset` is where the partition's last segment ended (or where
/// reading began), so consecutive segments leave no gap for a reader to wonder about.
pub fn encode_segment(
    batch: &RecordBatch,
    time_column: &'static str,
    name: String,
    first_offset: i64,
    next_offset: i64,
) -> Result<(Bytes, SegmentMeta), SegmentError> {
    let bytes = to_parquet(batch)?;
    let times = batch.column_by_name(time_column).and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or(SegmentError::Column(time_column))?;
    let meta = SegmentMeta {
        name,
        first_offset,
        next_offset,
        rows: batch.num_rows() as u64,
        bytes: bytes.len() as u64,
        min_time_ns: arrow::compute::min(times).unwrap_or(i64::MAX),
        max_time_ns: arrow::compute::max(times).unwrap_or(i64::MIN),
    };
    Ok((bytes, meta))
}

/// `batches` (of one table) as one.
pub fn concat<B: std::borrow::Borrow<RecordBatch>>(kind: Kind, batches: &[B]) -> Result<RecordBatch, SegmentError> {
    match batches {
        [one] => Ok(one.borrow().clone()),
        _ => Ok(arrow::compute::concat_batches(&kind.schema(), batches.iter().map(B::borrow))?),
    }
}

#[cfg(test)]
mod tests {
    use proto::v1::Point;

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
        let encode = || encode_segment(&aggregates_to_batch(&rows).unwrap(), "start_ns", segment_name("aggregates", "t", 2, 4, 9), 4, 9);
        let (bytes, meta) = encode().unwrap();
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
        assert_eq!(encode().unwrap().0, bytes, "the same rows give the same bytes");
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

    #[test]
    fn points_and_alerts_decode_straight_into_their_columns() {
        let tags: BTreeMap<String, String> = [("host".to_owned(), "a".to_owned())].into();
        let point = Point { metric: "cpu".into(), tags: tags.clone(), timestamp_ns: -5, value: 0.25 };
        let mut points = Kind::Points.builders();
        points.append(Some(&point.encode_to_vec()), 3, 40).unwrap();
        let err = points.append(Some(&[0xff, 0xff]), 3, 41).unwrap_err();
        assert!(matches!(err, DecodeError::Wire(_)), "{err}");
        assert!(matches!(points.append(None, 3, 42), Err(DecodeError::Empty)));
        assert_eq!(points.len(), 1, "a refused message adds no row");
        let batch = points.finish().unwrap();
        assert_eq!(batch.schema(), Kind::Points.schema());
        assert!(points.is_empty());
        let column = |b: &RecordBatch, name: &str| b.column_by_name(name).unwrap().clone();
        assert_eq!(column(&batch, "series").as_string::<i32>().value(0), r#"cpu{host="a"}"#);
        assert_eq!(column(&batch, "time_ns").as_primitive::<Int64Type>().value(0), -5);
        assert_eq!(column(&batch, "value").as_primitive::<Float64Type>().value(0), 0.25);
        assert_eq!(column(&batch, "kafka_offset").as_primitive::<Int64Type>().value(0), 40);

        let alert = Alert {
            id: "hot/cpu{host=\"a\"}".into(),
            rule: "hot".into(),
            series: Some(Series { metric: "cpu".into(), tags }),
            state: AlertState::Firing as i32,
            value: 97.5,
            threshold: 90.0,
            window_start_ns: 100,
            window_end_ns: 110,
            since_ns: 100,
        };
        let mut alerts = Kind::Alerts.builders();
        alerts.append(Some(&alert.encode_to_vec()), 0, 7).unwrap();
        alerts.append(Some(&Alert { state: 9, ..alert.clone() }.encode_to_vec()), 0, 8).unwrap();
        let batch = alerts.finish().unwrap();
        assert_eq!(batch.schema(), Kind::Alerts.schema());
        let states = column(&batch, "state");
        assert_eq!([states.as_string::<i32>().value(0), states.as_string::<i32>().value(1)], ["firing", "unknown(9)"]);
        assert_eq!(column(&batch, "metric").as_string::<i32>().value(1), "cpu");
        assert_eq!(column(&batch, "threshold").as_primitive::<Float64Type>().value(0), 90.0);
        let (_, meta) = encode_segment(&batch, Kind::Alerts.time_column(), "a".into(), 7, 9).unwrap();
        assert_eq!((meta.min_time_ns, meta.max_time_ns, meta.rows), (110, 110, 2));
    }
}
