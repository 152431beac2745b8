//! The one path every protocol feeds: validate a whole batch, then write it. A protocol's module only
//! decodes its wire format into points and maps the outcome to its own answers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use proto::v1::Point;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::kafka::PointSink;
use crate::validate::{Violation, validate_batch};

#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    limits: Arc<Limits>,
    sink: PointSink,
}

impl Ingest {
    pub(crate) fn new(limits: Limits, sink: PointSink) -> Self {
        Self { limits: Arc::new(limits), sink }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates every point, refusing the batch whole with every violation (`annotate` may add what
    /// the protocol knows, such as line numbers); then writes it and returns once Kafka acknowledged it.
    pub(crate) async fn write(
        &self,
        points: &[Point],
        context: impl FnOnce() -> String,
        annotate: impl Fn(&mut Violation),
    ) -> Result<()> {
        validate_batch(points, &self.limits, now_ns()).map_err(|mut violations| {
            violations.iter_mut().for_each(&annotate);
            Error::Invalid { context: context(), violations }
        })?;
        if points.is_empty() {
            return Ok(());
        }
        self.sink.write(points).await
    }
}

impl Ingest {
    /// Maps an OTLP export to points and writes them; a refusal names each point's metric by its path
    /// in the request. Returns the points accepted and the data points that made none.
    pub(crate) async fn write_otlp(&self, request: ExportMetricsServiceRequest) -> Result<(usize, usize)> {
        let mapped = crate::otlp::map(request).map_err(|violations| Error::Invalid { context: String::new(), violations })?;
        let origins = &mapped.origins;
        self.write(&mapped.points, String::new, |v| {
            if let Some(origin) = v.index.and_then(|i| origins.get(i)) {
                v.field = format!("{origin}.{}", v.field);
            }
        })
        .await?;
        Ok((mapped.points.len(), mapped.ignored))
    }
}

/// The collector's clock, in nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}
