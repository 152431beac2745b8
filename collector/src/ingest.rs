//! The one path every protocol feeds: authorize the caller, stamp its tenant, validate the whole batch,
//! take it from the caller's rate, then write it. A protocol's module only decodes its wire format into
//! points and maps the outcome to its own answers.
//!
//! A batch with invalid points is refused whole, unless its source accepts partial batches
//! (`accept_partial`): then its valid points are written and each invalid point (or unreadable line)
//! goes to the dead-letter topic with its raw bytes and why, in the same acknowledged write.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use proto::prost::Message as _;
use proto::v1::dead_letter::Reason;
use proto::v1::{DeadLetter, Point};

use crate::auth::{Auth, Caller, Reserved, TENANT_TAG};
use crate::config::{AcceptPartial, Limits};
use crate::error::{Error, Result};
use crate::kafka::PointSink;
use crate::metrics::IngestMetrics;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use plumbing::trace::{Attribute, TraceContext};
use crate::validate::{Violation, validate_batch};

#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    limits: Arc<Limits>,
    partial: AcceptPartial,
    auth: Auth,
    sink: PointSink,
    metrics: IngestMetrics,
    /// Whether this collector exports traces (then requests without a trace context are sampled too).
    tracing: bool,
}

impl Ingest {
    pub(crate) fn new(limits: Limits, partial: AcceptPartial, auth: Auth, sink: PointSink, tracing: bool) -> Self {
        Self { limits: Arc::new(limits), partial, auth, sink, metrics: IngestMetrics::default(), tracing }
    }

    pub(crate) fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Whether `source` accepts the valid points of a batch with invalid ones.
    pub(crate) fn accepts_partial(&self, source: Source) -> bool {
        match source {
            Source::Grpc => self.partial.grpc,
            Source::LineProtocol => self.partial.line_protocol,
            Source::RemoteWrite => self.partial.remote_write,
            Source::Otlp => self.partial.otlp,
            Source::Json => self.partial.json,
        }
    }

    /// The caller presenting `authorization` (an HTTP header's or gRPC metadata's value); checked before
    /// a request's body is read, so a stranger costs nothing more.
    pub(crate) fn authorize(&self, source: Source, authorization: Option<&str>) -> Result<Caller> {
        self.auth.check(authorization).inspect_err(|err| self.metrics.refused(source, 0, err))
    }

    /// Counts the refusal of a `source` request before its batch was decoded (its parameters or body:
    /// too large, not gzip, not the protocol), for `map_err`; `authorize`, `write` and `write_otlp`
    /// count their own, so that every refused request counts once.
    pub(crate) fn refuse(&self, source: Source) -> impl Fn(Error) -> Error + '_ {
        move |err| {
            self.metrics.refused(source, 0, &err);
            err
        }
    }

    /// Whether writes can be taken now: not while every Kafka broker is down.
    pub(crate) fn is_ready(&self) -> bool {
        !self.sink.is_down()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stamps the caller's tenant on every point and validates them, refusing the batch whole with
    /// every violation (`annotate` may add what the protocol knows, such as line numbers), or, when the
    /// source accepts partial batches, dead-lettering the invalid points; takes the points from the
    /// caller's rate; then writes them and returns once Kafka acknowledged all.
    pub(crate) async fn write(
        &self,
        caller: &Caller,
        batch: Batch<'_>,
        context: impl FnOnce() -> String,
        annotate: impl Fn(&mut Violation),
    ) -> Result<Written> {
        let (source, points) = (batch.source, batch.points.len());
        // A span per request (never per point), only for a request that carried a trace context or
        // when this collector exports traces; its points carry it on only when it is sampled.
        let span = (batch.parent.is_some() || self.tracing).then(|| {
            let attributes = vec![Attribute::new("protocol", source.name()), Attribute::new("points", points as i64)];
            plumbing::trace::child("collector.write", batch.parent.as_ref(), SpanKind::Server, attributes)
        });
        let traceparent = span.as_ref().and_then(plumbing::trace::traceparent);
        let written = self.write_uncounted(caller, batch, context, annotate, traceparent.as_deref()).await;
        match &written {
            Ok(w) => self.metrics.written(source, w.accepted, w.dead_lettered),
            Err(err) => self.metrics.refused(source, points, err),
        }
        if let Some(span) = &span {
            if let Err(err) = &written {
                span.span().set_status(Status::error(err.to_string()));
            }
            plumbing::trace::end(span);
        }
        written
    }

    async fn write_uncounted(
        &self,
        caller: &Caller,
        mut batch: Batch<'_>,
        context: impl FnOnce() -> String,
        annotate: impl Fn(&mut Violation),
        traceparent: Option<&str>,
    ) -> Result<Written> {
        let mut violations = stamp_tenant(caller, &mut batch.points);
        if let Err(invalid) = validate_batch(&batch.points, &self.limits, now_ns()) {
            violations.extend(invalid);
        }
        // Series are admitted only for a batch that is otherwise valid, and handed back if it is not
        // written after all.
        let mut reserved = Reserved::default();
        if violations.is_empty() {
            let (admitted, over) = caller.admit_series(&batch.points);
            reserved = admitted;
            violations.extend(over);
        }
        violations.sort_by_key(|v| v.index);
        violations.iter_mut().for_each(&annotate);
        let partial = self.accepts_partial(batch.source);
        // A rule on the whole batch (its size) cannot be met by dropping points.
        let whole = violations.iter().any(|v| v.index.is_none());
        if (!violations.is_empty() || !batch.malformed.is_empty()) && (!partial || whole) {
            reserved.release();
            if violations.is_empty() {
                violations = batch.malformed.iter().map(|l| Violation { index: None, line: None, field: "line".into(), reason: l.detail.clone() }).collect();
            }
            return Err(Error::Invalid { context: context(), violations });
        }
        let mut letters = std::mem::take(&mut batch.malformed);
        // The common case, every point valid, writes the batch as it came.
        let (mut good, suspects) = if violations.is_empty() {
            (batch.points, Vec::new())
        } else {
            (Vec::with_capacity(batch.points.len()), batch.points)
        };
        let mut violations = violations.into_iter().peekable();
        for (index, point) in suspects.into_iter().enumerate() {
            let mut why = Vec::new();
            while let Some(v) = violations.next_if(|v| v.index == Some(index)) {
                why.push(v.to_string());
            }
            if why.is_empty() {
                good.push(point);
            } else {
                let raw = batch.raw.map_or_else(|| point.encode_to_vec(), |raw| raw(index));
                letters.push(dead_letter(Reason::Invalid, why.join("; "), raw, Some(point)));
            }
        }
        if good.is_empty() && letters.is_empty() {
            return Ok(Written::default());
        }
        let written = match caller.take(good.len()) {
            Ok(()) => self.sink.write(&good, &letters, traceparent).await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            reserved.release();
            return Err(err);
        }
        Ok(Written { accepted: good.len(), dead_lettered: letters.len() })
    }
}

/// Where a batch came from, for the partial-acceptance setting of each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Source {
    Grpc,
    LineProtocol,
    RemoteWrite,
    Otlp,
    Json,
}

/// A decoded batch on its way in.
pub(crate) struct Batch<'a> {
    pub(crate) source: Source,
    pub(crate) points: Vec<Point>,
    /// The bytes point `i` came from, for its dead letter (a line of line protocol); without it, the
    /// point's protobuf encoding.
    pub(crate) raw: Option<&'a (dyn Fn(usize) -> Vec<u8> + Sync)>,
    /// Parts of the request that made no point (lines that are not line protocol), as dead letters.
    pub(crate) malformed: Vec<DeadLetter>,
    /// The trace context the request carried (`traceparent`), if any.
    pub(crate) parent: Option<TraceContext>,
}

impl Batch<'_> {
    pub(crate) fn of(source: Source, points: Vec<Point>) -> Self {
        Self { source, points, raw: None, malformed: Vec::new(), parent: None }
    }

    /// The batch, continuing the request's trace `parent`.
    pub(crate) fn traced(self, parent: Option<TraceContext>) -> Self {
        Self { parent, ..self }
    }
}

/// What a write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) accepted: usize,
    pub(crate) dead_lettered: usize,
}

/// A dead letter of the collector's.
pub(crate) fn dead_letter(reason: Reason, detail: String, raw: Vec<u8>, point: Option<Point>) -> DeadLetter {
    DeadLetter { reason: reason as i32, detail, service: "collector".into(), raw, point, refused_at_ns: now_ns(), ..DeadLetter::default() }
}

impl Ingest {
    /// Maps an OTLP export to points and writes them; a refusal names each point's metric by its path
    /// in the request. Returns the points accepted and the data points that made none.
    pub(crate) async fn write_otlp(&self, caller: &Caller, request: ExportMetricsServiceRequest) -> Result<(Written, usize)> {
        let crate::otlp::Mapped { points, origins, ignored } = crate::otlp::map(request)
            .map_err(|violations| Error::Invalid { context: String::new(), violations })
            .inspect_err(|err| self.metrics.refused(Source::Otlp, 0, err))?;
        let written = self.write(caller, Batch::of(Source::Otlp, points), String::new, |v| {
            if let Some(origin) = v.index.and_then(|i| origins.get(i)) {
                v.field = format!("{origin}.{}", v.field);
            }
        })
        .await?;
        Ok((written, ignored))
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
