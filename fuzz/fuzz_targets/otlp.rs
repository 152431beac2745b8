//! OTLP metrics: any body that decodes as an ExportMetricsServiceRequest maps into points each tied to
//! a metric of the request, or is refused naming a metric's `time_unix_nano`. A panic, or an error
//! outside the allowlist, is a finding.

#![no_main]

use collector::otlp::map;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use proto::prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = ExportMetricsServiceRequest::decode(data) else { return };
    match map(request) {
        Ok(mapped) => {
            assert_eq!(mapped.points.len(), mapped.origins.len());
            assert!(mapped.points.iter().all(|p| p.value.is_finite()), "a point that is not a finite number");
        }
        Err(violations) => {
            for v in &violations {
                assert!(v.field.starts_with("resource_metrics[") && v.field.ends_with(".time_unix_nano"), "unexpected field {:?}", v.field);
            }
        }
    }
});
