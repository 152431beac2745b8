//! Prometheus remote write: any body is refused as too large, not snappy or not a WriteRequest, or
//! decodes into points each tied to a series of the request, or is refused naming a series' labels or
//! samples. A panic, or an error outside the allowlist, is a finding.

#![no_main]

use collector::promwrite::{BodyError, decode};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    match decode(data, LIMIT) {
        Err(BodyError::TooLarge { announced, limit }) => assert!(announced > limit),
        Err(BodyError::NotSnappy(_) | BodyError::NotProtobuf(_)) => {}
        Ok(Ok(decoded)) => assert_eq!(decoded.points.len(), decoded.series.len()),
        Ok(Err(violations)) => {
            assert!(!violations.is_empty());
            for v in &violations {
                assert!(v.field.starts_with("timeseries["), "unexpected field {:?}", v.field);
                assert!(v.field.ends_with("].labels") || v.field.ends_with("].samples"), "unexpected field {:?}", v.field);
            }
        }
    }
});
