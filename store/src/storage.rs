//! Durable storage of aggregates in an embedded redb database: one row per series and window, so a
//! replayed aggregate overwrites its own row instead of adding a second one. A write is one
//! transaction, durable (fsynced) when `write` returns.

use std::path::Path;

use proto::prost::Message as _;
use proto::v1::{Aggregate, Series, SeriesWindows, WindowStats};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition};

use crate::error::{Error, Result};
use crate::select::Selector;

/// Series key -> `Series`.
const SERIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("series");
/// (series key, window start) -> `WindowStats`.
const WINDOWS: TableDefinition<'_, (&str, i64), &[u8]> = TableDefinition::new("windows");

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Rows that did not exist before.
    pub inserted: usize,
    /// Rows that a replay wrote again.
    pub replaced: usize,
}

#[derive(Debug)]
pub struct Storage {
    db: Database,
}

fn storage_error(err: impl Into<redb::Error>) -> Error {
    Error::Storage(err.into())
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Folder { path: dir.display().to_string(), source })?;
        let db = Database::create(dir.join("aggregates.redb")).map_err(storage_error)?;
        let txn = db.begin_write().map_err(storage_error)?;
        txn.open_table(SERIES).map_err(storage_error)?;
        txn.open_table(WINDOWS).map_err(storage_error)?;
        txn.commit().map_err(storage_error)?;
        Ok(Self { db })
    }

    /// Writes `aggregates` in one durable transaction. An aggregate without a series or window is
    /// skipped and logged: it cannot be keyed.
    pub fn write(&self, aggregates: &[Aggregate]) -> Result<Written> {
        let mut written = Written::default();
        let txn = self.db.begin_write().map_err(storage_error)?;
        {
            let mut series_table = txn.open_table(SERIES).map_err(storage_error)?;
            let mut windows = txn.open_table(WINDOWS).map_err(storage_error)?;
            for aggregate in aggregates {
                let (Some(series), Some(window)) = (&aggregate.series, &aggregate.window) else {
                    tracing::warn!(?aggregate, "aggregate without series or window; skipped");
                    continue;
                };
                let key = series.key();
                if series_table.get(key.as_str()).map_err(storage_error)?.is_none() {
                    series_table.insert(key.as_str(), series.encode_to_vec().as_slice()).map_err(storage_error)?;
                }
                let previous = windows
                    .insert((key.as_str(), window.start_ns), window.encode_to_vec().as_slice())
                    .map_err(storage_error)?;
                if previous.is_some() { written.replaced += 1 } else { written.inserted += 1 }
            }
        }
        txn.commit().map_err(storage_error)?;
        Ok(written)
    }

    /// The series `selector` selects, in key order.
    pub fn series(&self, selector: &Selector) -> Result<Vec<(String, Series)>> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        let table = txn.open_table(SERIES).map_err(storage_error)?;
        // Keys are `metric{...}`: one metric's series are the keys from "metric{" up to "metric|".
        let (low, high) = (format!("{}{{", selector.metric), format!("{}|", selector.metric));
        let rows = if selector.metric.is_empty() {
            table.iter().map_err(storage_error)?
        } else {
            table.range(low.as_str()..high.as_str()).map_err(storage_error)?
        };
        let mut found = Vec::new();
        for row in rows {
            let (key, value) = row.map_err(storage_error)?;
            let series = Series::decode(value.value()).map_err(|err| corrupt(key.value(), err))?;
            if selector.matches(&series.metric, &series.tags) {
                found.push((key.value().to_owned(), series));
            }
        }
        Ok(found)
    }

    /// The windows of each selected series whose start lies in `[start_ns, end_ns)`.
    pub fn range(&self, selector: &Selector, start_ns: i64, end_ns: i64) -> Result<Vec<SeriesWindows>> {
        let selected = self.series(selector)?;
        let txn = self.db.begin_read().map_err(storage_error)?;
        let table = txn.open_table(WINDOWS).map_err(storage_error)?;
        let mut result = Vec::new();
        for (key, series) in selected {
            let mut windows = Vec::new();
            for row in table.range((key.as_str(), start_ns)..(key.as_str(), end_ns)).map_err(storage_error)? {
                let (_, value) = row.map_err(storage_error)?;
                windows.push(WindowStats::decode(value.value()).map_err(|err| corrupt(&key, err))?);
            }
            if !windows.is_empty() {
                result.push(SeriesWindows { series: Some(series), windows });
            }
        }
        Ok(result)
    }

    /// How many window rows are stored.
    pub fn window_count(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        txn.open_table(WINDOWS).map_err(storage_error)?.len().map_err(storage_error)
    }
}

fn corrupt(key: &str, err: proto::prost::DecodeError) -> Error {
    Error::Storage(redb::Error::Corrupted(format!("row of {key}: {err}")))
}

#[cfg(test)]
mod tests {
    use proto::v1::SeriesSelector;

    use super::*;

    fn aggregate(metric: &str, host: &str, start: i64, sum: f64) -> Aggregate {
        Aggregate {
            series: Some(Series { metric: metric.into(), tags: [("host".to_owned(), host.to_owned())].into() }),
            window: Some(WindowStats { start_ns: start, end_ns: start + 10, count: 1, sum, mean: sum, min: sum, max: sum, ..WindowStats::default() }),
        }
    }

    fn all(metric: &str) -> Selector {
        Selector::compile(&SeriesSelector { metric: metric.into(), matchers: vec![] }).unwrap()
    }

    #[test]
    fn a_replayed_window_replaces_its_row_and_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("runnel-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let storage = Storage::open(&dir).unwrap();
            let batch = [aggregate("cpu", "a", 0, 1.0), aggregate("cpu", "b", 0, 2.0), aggregate("cpu", "a", 10, 3.0)];
            assert_eq!(storage.write(&batch).unwrap(), Written { inserted: 3, replaced: 0 });
            assert_eq!(storage.write(&batch[..1]).unwrap(), Written { inserted: 0, replaced: 1 });
        }
        let storage = Storage::open(&dir).unwrap();
        assert_eq!(storage.window_count().unwrap(), 3);
        let found = storage.range(&all("cpu"), 0, 10).unwrap();
        let sums: Vec<(String, Vec<f64>)> = found
            .iter()
            .map(|s| (s.series.as_ref().unwrap().tags["host"].clone(), s.windows.iter().map(|w| w.sum).collect()))
            .collect();
        assert_eq!(sums, vec![("a".into(), vec![1.0]), ("b".into(), vec![2.0])], "end is exclusive");
        assert!(storage.range(&all("cp"), 0, 100).unwrap().is_empty(), "a metric prefix is not a metric");
        assert_eq!(storage.series(&all("")).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
