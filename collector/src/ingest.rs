//! The one path every protocol feeds: authorize the caller, stamp its tenant, validate the whole batch,
//! take it from the caller's rate, then write it. A protocol's module only decodes its wire format into
//! points and maps the outcome to its own answers.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use proto::v1::Point;

use crate::auth::{Auth, Caller, TENANT_TAG};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::kafka::PointSink;
use crate::validate::{Violation, validate_batch};

#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    limits: Arc<Limits>,
    auth: Auth,
    sink: PointSink,
}

impl Ingest {
    pub(crate) fn new(limits: Limits, auth: Auth, sink: PointSink) -> Self {
        Self { limits: Arc::new(limits), auth, sink }
    }

    /// The caller presenting `authorization` (an HTTP header's or gRPC metadata's value); checked before
    /// a request's body is read, so a stranger costs nothing more.
    pub(crate) fn authorize(&self, authorization: Option<&str>) -> Result<Caller> {
        self.auth.check(authorization)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stamps the caller's tenant on every point and validates them, refusing the batch whole with
    /// every violation (`annotate` may add what the protocol knows, such as line numbers); takes the
    /// points from the caller's rate; then writes them and returns once Kafka acknowledged all.
    pub(crate) async fn write(
        &self,
        caller: &Caller,
        points: &mut [Point],
        context: impl FnOnce() -> String,
        annotate: impl Fn(&mut Violation),
    ) -> Result<()> {
        let mut violations = stamp_tenant(caller, points);
        if let Err(invalid) = validate_batch(points, &self.limits, now_ns()) {
            violations.extend(invalid);
        }
        if !violations.is_empty() {
            violations.sort_by_key(|v| v.index);
            violations.iter_mut().for_each(&annotate);
            return Err(Error::Invalid { context: context(), violations });
        }
        if points.is_empty() {
            return Ok(());
        }
        caller.take(points.len())?;
        self.sink.write(points).await
    }
}

impl Ingest {
    /// Maps an OTLP export to points and writes them; a refusal names each point's metric by its path
    /// in the request. Returns the points accepted and the data points that made none.
    pub(crate) async fn write_otlp(&self, caller: &Caller, request: ExportMetricsServiceRequest) -> Result<(usize, usize)> {
        let mut mapped = crate::otlp::map(request).map_err(|violations| Error::Invalid { context: String::new(), violations })?;
        let origins = &mapped.origins;
        self.write(caller, &mut mapped.points, String::new, |v| {
            if let Some(origin) = v.index.and_then(|i| origins.get(i)) {
                v.field = format!("{origin}.{}", v.field);
            }
        })
        .await?;
        Ok((mapped.points.len(), mapped.ignored))
    }
}

/// Sets the `tenant` tag of every point to the caller's tenant; a point that names another tenant is
/// a violation (a client cannot write into another tenant's series, nor be silently moved out of one).
fn stamp_tenant(caller: &Caller, points: &mut [Point]) -> Vec<Violation> {
    let Some(tenant) = caller.tenant.as_deref() else { return Vec::new() };
    let mut violations = Vec::new();
    for (index, point) in points.iter_mut().enumerate() {
        match point.tags.get(TENANT_TAG) {
            Some(other) if other != tenant => violations.push(Violation {
                index: Some(index),
                line: None,
                field: format!("tags[{TENANT_TAG:?}]"),
                reason: format!("{other:?} is not this token's tenant; the collector sets the tag"),
            }),
            Some(_) => {}
            None => {
                point.tags.insert(TENANT_TAG.to_owned(), tenant.to_owned());
            }
        }
    }
    violations
}

/// The collector's clock, in nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX)
}
