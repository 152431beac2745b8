//! InfluxDB line protocol: any body either parses into points, each numbered with a line of the body,
//! or is refused with violations that name a line and one of the expected fields; then the points go
//! through validation. A panic, or an error outside the allowlist, is a finding.

#![no_main]

use collector::config::Limits;
use collector::lineproto::{Precision, parse};
use collector::validate::validate_batch;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_700_000_000_000_000_000;

/// The fields a refused line may name.
const ALLOWED: [&str; 2] = ["line", "timestamp"];

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else { return };
    let lines = body.matches('\n').count() + 1;
    for precision in [Precision::Nanoseconds, Precision::Seconds] {
        match parse(body, precision, NOW) {
            Ok(parsed) => {
                assert_eq!(parsed.points.len(), parsed.lines.len());
                assert!(parsed.lines.iter().all(|l| (1..=lines).contains(l)), "a line number outside the body");
                if let Err(violations) = validate_batch(&parsed.points, &Limits::default(), NOW) {
                    assert!(violations.iter().all(|v| v.index.is_none_or(|i| i < parsed.points.len())));
                }
            }
            Err(violations) => {
                assert!(!violations.is_empty());
                for v in &violations {
                    assert!(ALLOWED.contains(&v.field.as_str()), "unexpected field {:?}", v.field);
                    assert!(v.line.is_some_and(|l| (1..=lines).contains(&l)), "no line, or one outside the body: {v:?}");
                }
            }
        }
    }
});
