//! The Runnel contract: the `runnel.v1` messages and services generated from `proto/runnel/v1`, the
//! series key that every topic is keyed by, and re-exports of the gRPC and protobuf crates so that every
//! service speaks the same versions. Also the foreign contracts the collector accepts: Prometheus's
//! remote-write request (`proto/prometheus`).

pub use prost;
pub use tonic;
pub use tonic_types;

/// The encoded `FileDescriptorSet` of every file of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runnel_descriptor.bin"));

/// The `runnel.v1` package.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("runnel.v1");
}

/// Prometheus's remote-write request, package `prometheus`.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod prometheus {
    tonic::include_proto!("prometheus");
}

use std::collections::BTreeMap;

/// The canonical key of a series: `metric{k1="v1",k2="v2"}` with tags in key order, `\` and `"` in
/// values escaped. Points and aggregates are keyed by it on Kafka, so one series always lands in one
/// partition, and the store and analyzer use it as the series identity.
pub fn series_key(metric: &str, tags: &BTreeMap<String, String>) -> String {
    let mut key = String::with_capacity(metric.len() + 2 + tags.len() * 16);
    write_series_key(&mut key, metric, tags.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    key
}

/// Appends the [`series_key`] of `metric` and `tags` (in key order, each key once) to `key`, so that a
/// caller keying many series reuses one buffer.
pub fn write_series_key<'a>(key: &mut String, metric: &str, tags: impl IntoIterator<Item = (&'a str, &'a str)>) {
    key.push_str(metric);
    key.push('{');
    for (i, (name, value)) in tags.into_iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(name);
        key.push_str("=\"");
        // Each run between characters to escape goes in whole.
        let mut rest = value;
        while let Some(at) = rest.find(['\\', '"']) {
            key.push_str(&rest[..at]);
            key.push('\\');
            key.push_str(&rest[at..=at]);
            rest = &rest[at + 1..];
        }
        key.push_str(rest);
        key.push('"');
    }
    key.push('}');
}

impl v1::Series {
    /// The canonical key of this series, see [`series_key`].
    pub fn key(&self) -> String {
        series_key(&self.metric, &self.tags)
    }
}

impl v1::Point {
    /// The canonical key of this point's series, see [`series_key`].
    pub fn series_key(&self) -> String {
        series_key(&self.metric, &self.tags)
    }
}

impl std::fmt::Display for v1::Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn key_orders_tags_and_escapes_values() {
        let key = series_key("cpu", &tags(&[("zone", "a\"b"), ("host", "x\\y")]));
        assert_eq!(key, r#"cpu{host="x\\y",zone="a\"b"}"#);
        assert_eq!(series_key("up", &BTreeMap::new()), "up{}");
        // Adjacent, leading and trailing characters to escape, beside multi-byte ones.
        assert_eq!(series_key("m", &tags(&[("k", "\\\"é\"")])), r#"m{k="\\\"é\""}"#);
    }

    #[test]
    fn escaping_keeps_keys_distinct() {
        // Without escaping, these two tag sets would give the same text.
        let a = series_key("m", &tags(&[("a", "1\",b=\"2")]));
        let b = series_key("m", &tags(&[("a", "1"), ("b", "2")]));
        assert_ne!(a, b);
    }
}
