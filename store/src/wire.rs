//! Points and aggregates read from their protobuf bytes without allocating: strings and sketches
//! borrowed from the message, for the ingest to append straight into Arrow columns.
//!
//! Why not prost: it decodes into an owned `Point`, a `String` per metric, tag key and tag value and a
//! `BTreeMap` node per tag, all freed a moment later. At millions of points a second those allocations
//! were a third of the ingest thread's own work. This reader follows the protobuf wire format for
//! `runnel.v1.Point` and `runnel.v1.Aggregate` (skipping unknown fields, the last of a repeated scalar
//! winning, a repeated embedded message merged, the last value of a repeated map key winning) and is
//! tested against prost on the same bytes.

use proto::v1::{Aggregate, Moments, Quantile, WindowStats};

/// Why bytes are not a protobuf `Point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a varint longer than 64 bits")]
    Varint,
    #[error("a field key longer than 32 bits")]
    Key,
    #[error("field {field} has wire type {wire_type}, not the one its type needs")]
    WireType { field: u32, wire_type: u8 },
    #[error("wire type {0} is not valid here")]
    UnknownWireType(u8),
    #[error("groups nested too deep")]
    Nesting,
    #[error("field number 0 is not valid")]
    FieldZero,
    #[error("field {0} is not valid UTF-8")]
    Utf8(&'static str),
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// Groups nested deeper are refused (prost refuses messages nested 100 deep).
const MAX_GROUP_DEPTH: u32 = 90;

/// A cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // A tenth byte above 1 overflows 64 bits.
                if i == 9 && byte > 1 {
                    return Err(WireError::Varint);
                }
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(if self.buf.len() < 10 { WireError::Truncated } else { WireError::Varint })
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < len {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next field's number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = u32::try_from(self.varint()?).map_err(|_| WireError::Key)?;
        let (field, wire_type) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            return Err(WireError::FieldZero);
        }
        Ok(Some((field, wire_type)))
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
        self.bytes(len)
    }

    fn string(&mut self, name: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.length_delimited()?).map_err(|_| WireError::Utf8(name))
    }

    /// An `int64` (the two's complement of the varint's 64 bits) or `uint64`.
    fn int64(&mut self, field: u32, wire_type: u8) -> Result<i64, WireError> {
        expect(field, wire_type, VARINT)?;
        Ok(self.varint()? as i64)
    }

    fn double(&mut self, field: u32, wire_type: u8) -> Result<f64, WireError> {
        expect(field, wire_type, FIXED64)?;
        let bytes = self.bytes(8)?;
        Ok(f64::from_le_bytes(bytes.try_into().map_err(|_| WireError::Truncated)?))
    }

    /// A length-delimited field: a string, bytes or an embedded message.
    fn field_bytes(&mut self, field: u32, wire_type: u8) -> Result<&'a [u8], WireError> {
        expect(field, wire_type, LEN)?;
        self.length_delimited()
    }

    fn skip(&mut self, field: u32, wire_type: u8) -> Result<(), WireError> {
        self.skip_nested(field, wire_type, 0)
    }

    fn skip_nested(&mut self, field: u32, wire_type: u8, depth: u32) -> Result<(), WireError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.bytes(8).map(drop),
            LEN => self.length_delimited().map(drop),
            FIXED32 => self.bytes(4).map(drop),
            // A group (gone from proto3, but still valid on the wire): its fields up to its end.
            START_GROUP if depth < MAX_GROUP_DEPTH => loop {
                match self.key()? {
                    Some((inner, END_GROUP)) if inner == field => return Ok(()),
                    Some((_, END_GROUP)) => return Err(WireError::UnknownWireType(END_GROUP)),
                    Some((inner, inner_type)) => self.skip_nested(inner, inner_type, depth + 1)?,
                    None => return Err(WireError::Truncated),
                }
            },
            START_GROUP => Err(WireError::Nesting),
            other => Err(WireError::UnknownWireType(other)),
        }
    }
}

fn expect(field: u32, wire_type: u8, wanted: u8) -> Result<(), WireError> {
    if wire_type == wanted { Ok(()) } else { Err(WireError::WireType { field, wire_type }) }
}

/// A point borrowed from its message. Its tags are in key order, each key once.
#[derive(Debug, PartialEq)]
pub struct PointView<'a> {
    pub metric: &'a str,
    pub tags: Vec<(&'a str, &'a str)>,
    pub timestamp_ns: i64,
    pub value: f64,
}

/// Reads a `runnel.v1.Point`. `tags` is a buffer to reuse (its contents are dropped): with it, reading
/// allocates nothing once the buffer has grown to the most tags a point carries.
pub fn point<'a>(buf: &'a [u8], tags: Vec<(&'_ str, &'_ str)>) -> Result<PointView<'a>, WireError> {
    let mut point = PointView { metric: "", tags: reuse(tags), timestamp_ns: 0, value: 0.0 };
    let mut reader = Reader { buf };
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => {
                expect(field, wire_type, LEN)?;
                point.metric = reader.string("metric")?;
            }
            2 => point.tags.push(map_entry(reader.field_bytes(field, wire_type)?)?),
            3 => point.timestamp_ns = reader.int64(field, wire_type)?,
            4 => point.value = reader.double(field, wire_type)?,
            _ => reader.skip(field, wire_type)?,
        }
    }
    canonical(&mut point.tags);
    Ok(point)
}

/// Puts tags in key order, each key once. Senders may write map entries in any order, and a key more
/// than once (the last one counts, as it does when protobuf merges maps).
fn canonical(tags: &mut Vec<(&str, &str)>) {
    if tags.is_sorted_by(|a, b| a.0 < b.0) {
        return;
    }
    // Stable, so the entries of one key keep their order and the last one is kept.
    tags.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = 0;
    for i in 0..tags.len() {
        if kept > 0 && tags[kept - 1].0 == tags[i].0 {
            tags[kept - 1] = tags[i];
        } else {
            tags[kept] = tags[i];
            kept += 1;
        }
    }
    tags.truncate(kept);
}

/// An aggregate borrowed from its message (or from an `Aggregate`): its series, in key order, and its
/// window. An absent series or window reads as an empty one.
#[derive(Debug, PartialEq)]
pub struct AggregateView<'a> {
    pub metric: &'a str,
    pub tags: Vec<(&'a str, &'a str)>,
    pub window: WindowView<'a>,
}

/// A `WindowStats`, its sketch borrowed.
#[derive(Debug, Default, PartialEq)]
pub struct WindowView<'a> {
    pub start_ns: i64,
    pub end_ns: i64,
    pub count: u64,
    pub sum: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub gradient_per_second: Option<f64>,
    pub first: f64,
    pub last: f64,
    pub first_ns: i64,
    pub last_ns: i64,
    pub stddev: Option<f64>,
    pub rate_per_second: Option<f64>,
    /// (q, value) pairs.
    pub quantiles: Vec<(f64, f64)>,
    pub sketch: &'a [u8],
    pub sketch_relative_accuracy: f64,
    /// Absent moments read as zeros, as the table stores them.
    pub moments: Moments,
}

impl<'a> WindowView<'a> {
    /// The view of an owned window, its quantiles left out (they would need a buffer).
    pub fn without_quantiles(w: &'a WindowStats) -> Self {
        WindowView {
            start_ns: w.start_ns,
            end_ns: w.end_ns,
            count: w.count,
            sum: w.sum,
            mean: w.mean,
            min: w.min,
            max: w.max,
            gradient_per_second: w.gradient_per_second,
            first: w.first,
            last: w.last,
            first_ns: w.first_ns,
            last_ns: w.last_ns,
            stddev: w.stddev,
            rate_per_second: w.rate_per_second,
            quantiles: Vec::new(),
            sketch: &w.sketch,
            sketch_relative_accuracy: w.sketch_relative_accuracy,
            moments: w.moments.unwrap_or_default(),
        }
    }

    /// The window, owned.
    pub fn to_stats(&self) -> WindowStats {
        WindowStats {
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            count: self.count,
            sum: self.sum,
            mean: self.mean,
            min: self.min,
            max: self.max,
            gradient_per_second: self.gradient_per_second,
            first: self.first,
            last: self.last,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            stddev: self.stddev,
            rate_per_second: self.rate_per_second,
            quantiles: self.quantiles.iter().map(|&(q, value)| Quantile { q, value }).collect(),
            sketch: self.sketch.to_vec(),
            sketch_relative_accuracy: self.sketch_relative_accuracy,
            moments: Some(self.moments),
        }
    }
}

/// Buffers an aggregate's reading reuses from message to message (empty between them).
#[derive(Debug, Default)]
pub struct Buffers {
    tags: Vec<(&'static str, &'static str)>,
    quantiles: Vec<(f64, f64)>,
}

impl Buffers {
    /// Takes back the buffers of a view read with them.
    pub fn recycle(&mut self, view: AggregateView<'_>) {
        self.tags = reuse(view.tags);
        self.quantiles = view.window.quantiles;
        self.quantiles.clear();
    }
}

/// Reads a `runnel.v1.Aggregate` with the buffers of `buffers` (return them with `Buffers::recycle`).
/// An embedded message that appears more than once is merged, as protobuf's parsers do.
pub fn aggregate<'a>(buf: &'a [u8], buffers: &mut Buffers) -> Result<AggregateView<'a>, WireError> {
    let mut view = AggregateView {
        metric: "",
        tags: reuse(std::mem::take(&mut buffers.tags)),
        window: WindowView { quantiles: std::mem::take(&mut buffers.quantiles), ..WindowView::default() },
    };
    let mut reader = Reader { buf };
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => series(reader.field_bytes(field, wire_type)?, &mut view)?,
            2 => window(reader.field_bytes(field, wire_type)?, &mut view.window)?,
            _ => reader.skip(field, wire_type)?,
        }
    }
    canonical(&mut view.tags);
    Ok(view)
}

/// Merges a `Series` message into `view`.
fn series<'a>(buf: &'a [u8], view: &mut AggregateView<'a>) -> Result<(), WireError> {
    let mut reader = Reader { buf };
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => {
                expect(field, wire_type, LEN)?;
                view.metric = reader.string("series.metric")?;
            }
            2 => view.tags.push(map_entry(reader.field_bytes(field, wire_type)?)?),
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

/// Merges a `WindowStats` message into `w`.
fn window<'a>(buf: &'a [u8], w: &mut WindowView<'a>) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => w.start_ns = r.int64(field, wt)?,
            2 => w.end_ns = r.int64(field, wt)?,
            3 => w.count = r.int64(field, wt)? as u64,
            4 => w.sum = r.double(field, wt)?,
            5 => w.mean = r.double(field, wt)?,
            6 => w.min = r.double(field, wt)?,
            7 => w.max = r.double(field, wt)?,
            8 => w.gradient_per_second = Some(r.double(field, wt)?),
            9 => w.first = r.double(field, wt)?,
            10 => w.last = r.double(field, wt)?,
            11 => w.first_ns = r.int64(field, wt)?,
            12 => w.last_ns = r.int64(field, wt)?,
            13 => w.stddev = Some(r.double(field, wt)?),
            14 => w.rate_per_second = Some(r.double(field, wt)?),
            15 => w.quantiles.push(quantile(r.field_bytes(field, wt)?)?),
            16 => w.sketch = r.field_bytes(field, wt)?,
            17 => w.sketch_relative_accuracy = r.double(field, wt)?,
            18 => moments(r.field_bytes(field, wt)?, &mut w.moments)?,
            _ => r.skip(field, wt)?,
        }
    }
    Ok(())
}

fn quantile(buf: &[u8]) -> Result<(f64, f64), WireError> {
    let (mut q, mut value) = (0.0, 0.0);
    let mut r = Reader { buf };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => q = r.double(field, wt)?,
            2 => value = r.double(field, wt)?,
            _ => r.skip(field, wt)?,
        }
    }
    Ok((q, value))
}

/// Merges a `Moments` message into `m`.
fn moments(buf: &[u8], m: &mut Moments) -> Result<(), WireError> {
    let mut r = Reader { buf };
    while let Some((field, wt)) = r.key()? {
        match field {
            1 => m.origin_ns = r.int64(field, wt)?,
            2 => m.mean_t = r.double(field, wt)?,
            3 => m.mean_v = r.double(field, wt)?,
            4 => m.m2_t = r.double(field, wt)?,
            5 => m.m2_v = r.double(field, wt)?,
            6 => m.c_tv = r.double(field, wt)?,
            _ => r.skip(field, wt)?,
        }
    }
    Ok(())
}

impl<'a> From<&'a Aggregate> for AggregateView<'a> {
    fn from(aggregate: &'a Aggregate) -> Self {
        Buffers::default().view(aggregate)
    }
}

impl Buffers {
    /// The view of an owned aggregate, on these buffers (return them with `Buffers::recycle`).
    pub fn view<'a>(&mut self, aggregate: &'a Aggregate) -> AggregateView<'a> {
        let mut tags = reuse(std::mem::take(&mut self.tags));
        let mut quantiles = std::mem::take(&mut self.quantiles);
        let metric = match &aggregate.series {
            Some(series) => {
                tags.extend(series.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                series.metric.as_str()
            }
            None => "",
        };
        let window = aggregate.window.as_ref().map_or_else(WindowView::default, |w| {
            quantiles.extend(w.quantiles.iter().map(|q| (q.q, q.value)));
            WindowView::without_quantiles(w)
        });
        AggregateView { metric, tags, window: WindowView { quantiles, ..window } }
    }
}

/// One entry of a `map<string, string>`: a message of key (1) and value (2), either possibly absent.
fn map_entry(buf: &[u8]) -> Result<(&str, &str), WireError> {
    let (mut key, mut value) = ("", "");
    let mut reader = Reader { buf };
    while let Some((field, wire_type)) = reader.key()? {
        match field {
            1 => {
                expect(field, wire_type, LEN)?;
                key = reader.string("tags key")?;
            }
            2 => {
                expect(field, wire_type, LEN)?;
                value = reader.string("tags value")?;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok((key, value))
}

/// An empty vector on the allocation of `used`, whose borrows have ended: collecting an emptied vector
/// into one of a type of the same size reuses its allocation.
pub fn reuse<'a>(mut used: Vec<(&'_ str, &'_ str)>) -> Vec<(&'a str, &'a str)> {
    used.clear();
    used.into_iter().map(|_| ("", "")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::prost::Message as _;
    use proto::v1::{Point, Quantile, Series, WindowStats};

    use super::*;

    /// A reading compared whole: metric, tags in key order, time, and the value's bits (NaN included).
    type Read = (String, Vec<(String, String)>, i64, u64);

    /// prost's reading of the same bytes, the oracle.
    fn by_prost(bytes: &[u8]) -> Option<Read> {
        let p = Point::decode(bytes).ok()?;
        Some((p.metric, p.tags.into_iter().collect(), p.timestamp_ns, p.value.to_bits()))
    }

    fn by_wire(bytes: &[u8]) -> Option<Read> {
        let p = point(bytes, Vec::new()).ok()?;
        let tags = p.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Some((p.metric.to_string(), tags, p.timestamp_ns, p.value.to_bits()))
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn entry(key: Option<&str>, value: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(key) = key {
            len_field(1, key.as_bytes(), &mut out);
        }
        if let Some(value) = value {
            len_field(2, value.as_bytes(), &mut out);
        }
        out
    }

    /// A deterministic pseudo-random sequence (xorshift64*), so a failure names its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn reads_what_prost_writes() {
        let tags: BTreeMap<String, String> =
            [("zone", "eu\"1"), ("host", "h-7"), ("", "empty key"), ("k", "")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (timestamp_ns, value) in [(0, 0.0), (-1, -0.5), (i64::MIN, f64::MAX), (i64::MAX, f64::NAN), (1_700_000_000_000_000_000, 42.25)] {
            let p = Point { metric: "cpu.load".into(), tags: tags.clone(), timestamp_ns, value };
            let bytes = p.encode_to_vec();
            assert_eq!(by_wire(&bytes), by_prost(&bytes));
            let view = point(&bytes, Vec::new()).unwrap();
            assert_eq!(view.tags.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["", "host", "k", "zone"]);
        }
        assert_eq!(by_wire(&Point::default().encode_to_vec()), by_prost(&[]));
    }

    /// Hand-made messages of every shape the wire format allows: fields in any order and repeated, map
    /// entries unsorted, repeated and missing a key or value, unknown fields of every wire type. Both
    /// readers must agree on each, accepting or refusing alike.
    #[test]
    fn agrees_with_prost_on_arbitrary_messages() {
        let words = ["", "a", "b", "host", "zone", "ä€", "x\"y"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut refused = 0;
        for case in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..rng.below(8) {
                match rng.below(8) {
                    0 => len_field(1, words[rng.below(7) as usize].as_bytes(), &mut bytes),
                    1 => {
                        let key = (rng.below(4) > 0).then(|| words[rng.below(7) as usize]);
                        let value = (rng.below(4) > 0).then(|| words[rng.below(7) as usize]);
                        len_field(2, &entry(key, value), &mut bytes);
                    }
                    2 => {
                        varint(3 << 3, &mut bytes);
                        varint(rng.next() >> rng.below(64), &mut bytes);
                    }
                    3 => {
                        varint(4 << 3 | 1, &mut bytes);
                        bytes.extend_from_slice(&rng.next().to_le_bytes());
                    }
                    4 => {
                        // An unknown field of a valid wire type.
                        let field = 5 + rng.below(1000);
                        match [0, 1, 2, 5][rng.below(4) as usize] {
                            0 => {
                                varint(field << 3, &mut bytes);
                                varint(rng.next(), &mut bytes);
                            }
                            1 => {
                                varint(field << 3 | 1, &mut bytes);
                                bytes.extend_from_slice(&[7; 8]);
                            }
                            2 => len_field(field, b"unknown", &mut bytes),
                            _ => {
                                varint(field << 3 | 5, &mut bytes);
                                bytes.extend_from_slice(&[7; 4]);
                            }
                        }
                    }
                    5 => {
                        // A known field with the wrong wire type.
                        varint((1 + rng.below(4)) << 3 | [0, 1, 2, 5][rng.below(4) as usize], &mut bytes);
                        varint(3, &mut bytes);
                        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
                    }
                    6 => {
                        // Invalid UTF-8 in a string.
                        len_field(1, &[0xff, 0xfe], &mut bytes);
                    }
                    _ => {
                        // Keys and varints at and past their limits.
                        match rng.below(3) {
                            0 => varint(u64::from(u32::MAX) + rng.below(2), &mut bytes),
                            1 => {
                                varint(3 << 3, &mut bytes);
                                bytes.extend_from_slice(&[0xff; 9]);
                                bytes.push(rng.below(4) as u8);
                            }
                            _ => bytes.extend_from_slice(&[0x80; 11]),
                        }
                    }
                }
            }
            // Sometimes cut short.
            if rng.below(5) == 0 && !bytes.is_empty() {
                bytes.truncate(rng.below(bytes.len() as u64) as usize);
            }
            let expected = by_prost(&bytes);
            refused += usize::from(expected.is_none());
            assert_eq!(by_wire(&bytes), expected, "case {case}: {bytes:?}");
        }
        // The cases exercise both outcomes.
        assert!(refused > 1000 && refused < 19_000, "{refused} refused");
    }

    fn random_aggregate(rng: &mut Rng) -> Aggregate {
        let words = ["", "a", "host", "zone", "ä€", "x\"y"];
        let pick = |rng: &mut Rng| words[rng.below(words.len() as u64) as usize].to_string();
        let float = |rng: &mut Rng| match rng.below(6) {
            0 => 0.0,
            1 => f64::NAN,
            2 => -0.0,
            _ => f64::from_bits(rng.next()),
        };
        let series = (rng.below(5) > 0).then(|| Series {
            metric: pick(rng),
            tags: (0..rng.below(4)).map(|_| (pick(rng), pick(rng))).collect(),
        });
        let window = (rng.below(5) > 0).then(|| WindowStats {
            start_ns: rng.next() as i64,
            end_ns: rng.next() as i64 >> rng.below(64),
            count: rng.next() >> rng.below(64),
            sum: float(rng),
            mean: float(rng),
            min: float(rng),
            max: float(rng),
            gradient_per_second: (rng.below(2) == 0).then(|| float(rng)),
            first: float(rng),
            last: float(rng),
            first_ns: rng.next() as i64,
            last_ns: -(rng.below(1000) as i64),
            stddev: (rng.below(2) == 0).then(|| float(rng)),
            rate_per_second: (rng.below(2) == 0).then(|| float(rng)),
            quantiles: (0..rng.below(4)).map(|_| Quantile { q: float(rng), value: float(rng) }).collect(),
            sketch: (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
            sketch_relative_accuracy: float(rng),
            moments: (rng.below(3) > 0).then(|| Moments {
                origin_ns: rng.next() as i64,
                mean_t: float(rng),
                mean_v: float(rng),
                m2_t: float(rng),
                m2_v: float(rng),
                c_tv: float(rng),
            }),
        });
        Aggregate { series, window }
    }

    /// Messages as the processor writes them, two of them concatenated (which protobuf merges), cut
    /// short or with a byte changed: both readers must agree on each, accepting or refusing alike.
    /// Compared through `Debug`, so NaN and -0.0 compare by what they are.
    #[test]
    fn agrees_with_prost_on_aggregates() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut buffers = Buffers::default();
        let (mut refused, mut merged) = (0, 0);
        for case in 0..20_000 {
            let mut bytes = random_aggregate(&mut rng).encode_to_vec();
            if rng.below(4) == 0 {
                bytes.extend(random_aggregate(&mut rng).encode_to_vec());
                merged += 1;
            }
            match rng.below(8) {
                0 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                1 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.next() as u8;
                }
                _ => {}
            }
            let expected = Aggregate::decode(bytes.as_slice()).ok();
            let expected = expected.as_ref().map(|a| format!("{:?}", AggregateView::from(a)));
            let read = aggregate(&bytes, &mut buffers);
            let got = read.as_ref().ok().map(|view| format!("{view:?}"));
            assert_eq!(got, expected, "case {case}: {bytes:?}");
            refused += usize::from(expected.is_none());
            if let Ok(view) = read {
                buffers.recycle(view);
            }
        }
        assert!(refused > 500 && refused < 5000 && merged > 4000, "{refused} refused, {merged} merged");
    }

    #[test]
    fn reuses_the_tag_buffer() {
        let p = Point { metric: "m".into(), tags: [("a".to_string(), "1".to_string())].into(), timestamp_ns: 1, value: 1.0 };
        let bytes = p.encode_to_vec();
        let first = point(&bytes, Vec::with_capacity(16)).unwrap();
        let capacity = first.tags.capacity();
        let second = point(&bytes, first.tags).unwrap();
        assert_eq!(second.tags.capacity(), capacity);
        assert!(capacity >= 16);
    }
}
