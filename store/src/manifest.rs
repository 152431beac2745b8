//! What is durable for one Kafka partition of one topic: the list of its segments, kept as one JSON
//! object beside them. No IO here: the manifest is plain data with the rules that keep it whole.
//!
//! Only what the manifest lists is readable, and the store commits a partition's Kafka offset only after
//! the manifest that covers it is written: a segment written before a crash but not yet listed is never
//! read (the replay lists its own), so no record is read twice. Segments are listed in offset order and
//! never overlap, so a reader sees every record once.

use serde::{Deserialize, Serialize};

/// One segment of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// The object name (see `segment::segment_name`).
    pub name: String,
    /// The offset of its first record.
    pub first_offset: i64,
    /// One past the offset of its last record: where the next segment starts.
    pub next_offset: i64,
    pub rows: u64,
    pub bytes: u64,
    /// The smallest and largest event time (window start, for aggregates) it holds: a reader skips a
    /// segment outside its range without opening it.
    pub min_time_ns: i64,
    pub max_time_ns: i64,
}

/// The durable segments of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bumped by every change: a writer that read version n writes n + 1 only if it is still n.
    pub version: u64,
    pub segments: Vec<SegmentMeta>,
    /// One past the last record ever listed: where reading resumes, even once retention has removed
    /// every segment.
    #[serde(default)]
    pub next: Option<i64>,
}

/// A change the manifest refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("segment {name} starts at offset {first_offset}, before the end {next_offset} of what is listed")]
    Overlap { name: String, first_offset: i64, next_offset: i64 },
    #[error("segment {name} is empty: offsets [{first_offset}, {next_offset})")]
    Empty { name: String, first_offset: i64, next_offset: i64 },
    #[error("compaction of {replaced:?} does not match a run of listed segments covering [{first_offset}, {next_offset})")]
    NotARun { replaced: Vec<String>, first_offset: i64, next_offset: i64 },
}

impl Manifest {
    /// Where consuming resumes: one past the last durable record (`None`: nothing is durable yet).
    pub fn next_offset(&self) -> Option<i64> {
        self.next.or_else(|| self.segments.last().map(|s| s.next_offset))
    }

    /// Lists a new segment after the others.
    pub fn append(&mut self, segment: SegmentMeta) -> Result<(), ManifestError> {
        let SegmentMeta { first_offset, next_offset, .. } = segment;
        if next_offset <= first_offset {
            return Err(ManifestError::Empty { name: segment.name, first_offset, next_offset });
        }
        if let Some(end) = self.next_offset()
            && first_offset < end
        {
            return Err(ManifestError::Overlap { name: segment.name, first_offset, next_offset: end });
        }
        self.next = Some(next_offset);
        self.segments.push(segment);
        self.version += 1;
        Ok(())
    }

    /// Removes the leading segments that `expired` says are past retention, stopping at the first that
    /// is not, so that what stays is still one chain; returns the removed ones.
    pub fn expire(&mut self, expired: impl Fn(&SegmentMeta) -> bool) -> Vec<SegmentMeta> {
        let count = self.segments.iter().take_while(|s| expired(s)).count();
        if count == 0 {
            return Vec::new();
        }
        self.next = self.next_offset();
        self.version += 1;
        self.segments.drain(..count).collect()
    }

    /// Replaces a run of consecutive listed segments by one that holds exactly their records (a
    /// compaction): readers of the new version see the same records, once. With `same_rows` the merged
    /// segment must hold as many rows as the run (raw records); without, it may hold fewer (a tier's
    /// partial rows of one step merged into one).
    pub fn compact(&mut self, merged: SegmentMeta, same_rows: bool) -> Result<Vec<SegmentMeta>, ManifestError> {
        let start = self.segments.iter().position(|s| s.first_offset == merged.first_offset);
        let end = self.segments.iter().position(|s| s.next_offset == merged.next_offset);
        let (Some(start), Some(end)) = (start, end) else {
            return Err(ManifestError::NotARun {
                replaced: Vec::new(),
                first_offset: merged.first_offset,
                next_offset: merged.next_offset,
            });
        };
        let run = start..=end;
        let rows: u64 = self.segments.get(run.clone()).map_or(0, |r| r.iter().map(|s| s.rows).sum());
        if end < start || (same_rows && rows != merged.rows) || merged.rows > rows {
            return Err(ManifestError::NotARun {
                replaced: self.segments.get(run).map(|r| r.iter().map(|s| s.name.clone()).collect()).unwrap_or_default(),
                first_offset: merged.first_offset,
                next_offset: merged.next_offset,
            });
        }
        let replaced = self.segments.splice(run, [merged]).collect();
        self.version += 1;
        Ok(replaced)
    }

    /// The segments that may hold records with times in `[from_ns, to_ns)`.
    pub fn overlapping(&self, from_ns: i64, to_ns: i64) -> impl Iterator<Item = &SegmentMeta> {
        self.segments.iter().filter(move |s| s.max_time_ns >= from_ns && s.min_time_ns < to_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: i64, next: i64, rows: u64, times: (i64, i64)) -> SegmentMeta {
        SegmentMeta {
            name: format!("s{first}"),
            first_offset: first,
            next_offset: next,
            rows,
            bytes: rows * 10,
            min_time_ns: times.0,
            max_time_ns: times.1,
        }
    }

    #[test]
    fn segments_follow_each_other_and_name_where_to_resume() {
        let mut m = Manifest::default();
        assert_eq!(m.next_offset(), None);
        m.append(seg(0, 10, 10, (0, 9))).unwrap();
        // A gap is fine: transaction markers and aborted records take offsets.
        m.append(seg(12, 20, 7, (10, 19))).unwrap();
        assert_eq!((m.next_offset(), m.version), (Some(20), 2));
        assert_eq!(
            m.append(seg(19, 25, 6, (0, 0))),
            Err(ManifestError::Overlap { name: "s19".into(), first_offset: 19, next_offset: 20 })
        );
        assert!(matches!(m.append(seg(30, 30, 0, (0, 0))), Err(ManifestError::Empty { .. })));
        assert_eq!(m.segments.len(), 2, "a refused change leaves it as it was");
        let names: Vec<&str> = m.overlapping(9, 12).map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["s0", "s12"]);
        assert_eq!(m.overlapping(20, 30).count(), 0);
    }

    #[test]
    fn compaction_replaces_a_run_with_the_same_records() {
        let mut m = Manifest::default();
        for (first, next) in [(0, 10), (10, 20), (20, 30), (30, 40)] {
            m.append(seg(first, next, 10, (first, next - 1))).unwrap();
        }
        let replaced = m.compact(seg(10, 30, 20, (10, 29)), true).unwrap();
        assert_eq!(replaced.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["s10", "s20"]);
        assert_eq!(m.segments.iter().map(|s| (s.first_offset, s.next_offset)).collect::<Vec<_>>(), vec![(0, 10), (10, 30), (30, 40)]);
        assert_eq!(m.version, 5);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        // Not a run's bounds, bounds the wrong way round, or not its rows: refused.
        assert!(m.compact(seg(5, 30, 25, (0, 0)), true).is_err());
        assert!(m.compact(seg(30, 30, 0, (0, 0)), true).is_err());
        assert!(m.compact(seg(30, 10, 0, (0, 0)), true).is_err());
        assert!(m.compact(seg(0, 30, 29, (0, 0)), true).is_err());
        assert!(m.compact(seg(0, 30, 31, (0, 0)), false).is_err(), "never more rows than the run");
        m.compact(seg(0, 30, 12, (0, 29)), false).unwrap();
        assert_eq!(m.segments.iter().map(|s| (s.first_offset, s.rows)).collect::<Vec<_>>(), vec![(0, 12), (30, 10)]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    #[test]
    fn expiry_removes_a_leading_run_and_keeps_where_to_resume() {
        let mut m = Manifest::default();
        for (first, next) in [(0, 10), (10, 20), (20, 30)] {
            m.append(seg(first, next, 10, (first, next - 1))).unwrap();
        }
        // The middle one is old too, but the first is not: nothing goes, the chain stays whole.
        assert!(m.expire(|s| s.first_offset == 10).is_empty());
        assert_eq!(m.version, 3);
        let gone = m.expire(|s| s.max_time_ns < 20);
        assert_eq!(gone.iter().map(|s| s.first_offset).collect::<Vec<_>>(), vec![0, 10]);
        assert_eq!((m.segments.len(), m.version, m.next_offset()), (1, 4, Some(30)));
        m.expire(|_| true);
        assert_eq!((m.segments.len(), m.next_offset()), (0, Some(30)), "reading resumes past what expired");
        m.append(seg(30, 40, 1, (0, 0))).unwrap();
        assert!(m.append(seg(25, 45, 1, (0, 0))).is_err(), "nothing before the end is listed again");
        // A manifest written before `next` existed still says where to resume.
        let old: Manifest = serde_json::from_str(r#"{"version":1,"segments":[{"name":"a","first_offset":0,"next_offset":7,"rows":1,"bytes":1,"min_time_ns":0,"max_time_ns":0}]}"#).unwrap();
        assert_eq!(old.next_offset(), Some(7));
    }
}
