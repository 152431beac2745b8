//! The HTTP ingest endpoints: InfluxDB's v2 write API (line protocol, so Telegraf's `influxdb_v2`
//! output sends here unchanged), Prometheus remote write (at Prometheus's own receiver path), OTLP/HTTP
//! metrics and JSON batches. Each decodes into points and takes the one validated path to Kafka; refusals answer in the
//! protocol's own form (see `error.rs`).
//!
//! Bodies are read up to `limits.max_request_bytes`; a gzip body is inflated through a reader capped at
//! `limits.max_decompressed_bytes`, so a gzip bomb is refused after reading at most the cap.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use flate2::read::MultiGzDecoder;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use proto::prost::Message as _;
use proto::v1::Point;
use proto::v1::dead_letter::Reason;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::ingest::{Batch, Ingest, Source, Written, dead_letter, now_ns};
use crate::lineproto::{self, Precision};
use crate::promwrite::{self, BodyError};
use crate::validate::Violation;

/// The headers a successful write carries besides its status.
const ACCEPTED_HEADER: &str = "runnel-accepted-points";
const IGNORED_HEADER: &str = "runnel-ignored-values";
const DEAD_LETTERED_HEADER: &str = "runnel-dead-lettered";

/// A bound, not yet serving, HTTP listener.
#[derive(Debug)]
pub(crate) struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HttpListener {
    pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the ingest endpoints, over TLS when `tls` is given, until `shutdown`; then lets in-flight
    /// requests finish.
    pub(crate) async fn serve(self, ingest: Ingest, tls: Option<RustlsConfig>, shutdown: plumbing::Shutdown) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, tls = tls.is_some(), "http serving");
        let router = Router::new()
            .route("/api/v2/write", post(write_line_protocol))
            // Prometheus's own receiver path, and Cortex's and Mimir's.
            .route("/api/v1/write", post(write_remote))
            .route("/api/v1/push", post(write_remote))
            .route("/api/v1/points", post(write_json))
            // OTLP/HTTP's metrics path, protobuf-encoded.
            .route("/v1/metrics", post(write_otlp))
            .route("/health", get(ready))
            .route("/readyz", get(ready))
            .route("/livez", get(live))
            .with_state(ingest);
        let Some(tls) = tls else {
            return axum::serve(self.listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        };
        // axum-server does the handshakes in each connection's own task (a slow client holds up no
        // other), with a deadline.
        let handle = axum_server::Handle::<SocketAddr>::new();
        let stopper = handle.clone();
        let _stop = tokio::spawn(async move {
            shutdown.cancelled().await;
            stopper.graceful_shutdown(None);
        });
        axum_server::Server::from_listener(self.listener)
            .acceptor(RustlsAcceptor::new(tls))
            .handle(handle)
            .serve(router.into_make_service())
            .await
    }
}

/// The InfluxDB v2 write parameters; `org` and `bucket` are accepted and not used (Runnel has one
/// points topic), so a Telegraf configuration needs no change.
#[derive(Debug, Deserialize)]
struct WriteParams {
    precision: Option<String>,
}

async fn write_line_protocol(
    State(ingest): State<Ingest>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let caller = ingest.authorize(Source::LineProtocol, authorization(&headers))?;
    let refuse = ingest.refuse(Source::LineProtocol);
    let precision = match params.precision.as_deref() {
        None => Precision::default(),
        Some(name) => name.parse().map_err(|reason| refuse(Error::BadRequest { what: "precision".into(), reason }))?,
    };
    let body = read_body(body, &headers, ingest.limits()).await.map_err(&refuse)?;
    let text = std::str::from_utf8(&body)
        .map_err(|err| refuse(Error::BadRequest { what: "body".into(), reason: format!("not UTF-8: {err}") }))?;
    let parsed = lineproto::parse_lenient(text, precision, now_ns());
    let partial = ingest.accepts_partial(Source::LineProtocol);
    if !partial && !parsed.refused.is_empty() {
        let lines = parsed.points.len() + parsed.refused.len();
        let err = Error::Invalid { context: String::new(), violations: parsed.refused.into_iter().map(|(_, v)| v).collect() };
        ingest.metrics().refused(Source::LineProtocol, lines, &err);
        return Err(err);
    }
    // A point's dead letter carries the text of its line.
    let physical: Vec<&str> = text.split('\n').collect();
    let lines = parsed.lines;
    let line_text = |i: usize| {
        let line = lines.get(i).and_then(|l| physical.get(l - 1)).copied().unwrap_or_default();
        line.trim_end_matches('\r').as_bytes().to_vec()
    };
    let malformed =
        parsed.refused.into_iter().map(|(raw, v)| dead_letter(Reason::Malformed, v.to_string(), raw.into_bytes(), None)).collect();
    let parent = plumbing::trace::from_http(&headers);
    let batch = Batch { source: Source::LineProtocol, points: parsed.points, raw: Some(&line_text), malformed, parent };
    let written = ingest.write(&caller, batch, String::new, |v| v.line = v.index.and_then(|i| lines.get(i).copied())).await?;
    Ok(no_content(written, parsed.ignored_fields))
}

async fn write_remote(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Result<Response> {
    let caller = ingest.authorize(Source::RemoteWrite, authorization(&headers))?;
    let refuse = ingest.refuse(Source::RemoteWrite);
    match headers.get(header::CONTENT_ENCODING).map(HeaderValue::to_str) {
        None | Some(Ok("snappy")) => {}
        Some(other) => return Err(refuse(Error::UnsupportedEncoding(format!("{other:?}")))),
    }
    let limits = ingest.limits();
    let raw = read_raw(body, limits).await.map_err(&refuse)?;
    let decoded = match promwrite::decode(&raw, limits.max_decompressed_bytes) {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(violations)) => return Err(refuse(Error::Invalid { context: String::new(), violations })),
        Err(BodyError::TooLarge { limit, .. }) => return Err(refuse(Error::TooLarge { what: "decompressed body".into(), limit })),
        Err(BodyError::NotSnappy(reason)) => {
            return Err(refuse(Error::BadRequest { what: "body".into(), reason: format!("not snappy: {reason}") }));
        }
        Err(BodyError::NotProtobuf(reason)) => {
            return Err(refuse(Error::BadRequest { what: "body".into(), reason: format!("not a prometheus.WriteRequest: {reason}") }));
        }
    };
    let series = &decoded.series;
    let written = ingest
        .write(&caller, Batch::of(Source::RemoteWrite, decoded.points).traced(plumbing::trace::from_http(&headers)), String::new, |v| {
            if let Some(s) = v.index.and_then(|i| series.get(i)) {
                v.field = format!("timeseries[{s}].{}", v.field);
            }
        })
        .await?;
    Ok(no_content(written, decoded.ignored))
}

async fn write_otlp(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Result<Response> {
    let caller = ingest.authorize(Source::Otlp, authorization(&headers))?;
    let refuse = ingest.refuse(Source::Otlp);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/x-protobuf") {
        return Err(refuse(Error::UnsupportedMediaType(format!("{content_type:?}; OTLP is taken as application/x-protobuf"))));
    }
    let body = read_body(body, &headers, ingest.limits()).await.map_err(&refuse)?;
    let request = ExportMetricsServiceRequest::decode(body)
        .map_err(|err| refuse(Error::BadRequest { what: "body".into(), reason: format!("not an ExportMetricsServiceRequest: {err}") }))?;
    ingest.write_otlp(&caller, request).await?;
    let body = ExportMetricsServiceResponse { partial_success: None }.encode_to_vec();
    Ok(([(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response())
}

/// The `Authorization` header, if any.
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// A write's success: `204` with how many points were accepted, how many went to the dead-letter
/// topic, and how many values made none.
fn no_content(written: Written, ignored: usize) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(ACCEPTED_HEADER, HeaderValue::from(written.accepted));
    response.headers_mut().insert(DEAD_LETTERED_HEADER, HeaderValue::from(written.dead_lettered));
    response.headers_mut().insert(IGNORED_HEADER, HeaderValue::from(ignored));
    response
}

/// A JSON batch: the `Point` message of the gRPC API, field for field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBatch {
    points: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPoint {
    metric: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// A number, or a string as protobuf's JSON mapping writes 64-bit integers (JavaScript's numbers
    /// hold nanosecond timestamps only approximately).
    timestamp_ns: serde_json::Value,
    value: f64,
}

async fn write_json(State(ingest): State<Ingest>, headers: HeaderMap, body: Body) -> Result<Response> {
    let caller = ingest.authorize(Source::Json, authorization(&headers))?;
    let refuse = ingest.refuse(Source::Json);
    let body = read_body(body, &headers, ingest.limits()).await.map_err(&refuse)?;
    let batch: JsonBatch =
        serde_json::from_slice(&body).map_err(|err| refuse(Error::BadRequest { what: "body".into(), reason: err.to_string() }))?;
    let points = json_points(batch).map_err(&refuse)?;
    let written = ingest.write(&caller, Batch::of(Source::Json, points).traced(plumbing::trace::from_http(&headers)), String::new, |_| {}).await?;
    let body = serde_json::json!({ "accepted": written.accepted, "dead_lettered": written.dead_lettered }).to_string();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Decodes every point, reporting each one that is not a point with its index.
fn json_points(batch: JsonBatch) -> Result<Vec<Point>> {
    let mut points = Vec::with_capacity(batch.points.len());
    let mut violations = Vec::new();
    for (index, value) in batch.points.into_iter().enumerate() {
        let refuse = |field: &str, reason: String| Violation { index: Some(index), line: None, field: field.to_owned(), reason };
        match serde_json::from_value::<JsonPoint>(value) {
            Ok(p) => {
                // Read here rather than by serde, so that a refusal names the field.
                let timestamp_ns = match &p.timestamp_ns {
                    serde_json::Value::Number(n) => n.as_i64(),
                    serde_json::Value::String(text) => text.parse().ok(),
                    _ => None,
                };
                let Some(timestamp_ns) = timestamp_ns else {
                    violations.push(refuse("timestamp_ns", format!("{} is not a 64-bit integer", p.timestamp_ns)));
                    continue;
                };
                points.push(Point { metric: p.metric, tags: p.tags, timestamp_ns, value: p.value });
            }
            Err(err) => violations.push(refuse("", err.to_string())),
        }
    }
    if violations.is_empty() { Ok(points) } else { Err(Error::Invalid { context: String::new(), violations }) }
}

/// Reads the body as sent, within the request limit.
async fn read_raw(body: Body, limits: &Limits) -> Result<Bytes> {
    axum::body::to_bytes(body, limits.max_request_bytes)
        .await
        .map_err(|_| Error::TooLarge { what: "request body".into(), limit: limits.max_request_bytes })
}

/// Reads the body within the request limit and inflates a gzip one within the decompressed limit.
async fn read_body(body: Body, headers: &HeaderMap, limits: &Limits) -> Result<Bytes> {
    let raw = read_raw(body, limits).await?;
    match headers.get(header::CONTENT_ENCODING).map(HeaderValue::to_str) {
        None | Some(Ok("identity")) => Ok(raw),
        Some(Ok("gzip")) => {
            let limit = limits.max_decompressed_bytes;
            let mut inflated = Vec::new();
            // One byte past the limit tells a body at the limit from one beyond it.
            MultiGzDecoder::new(raw.as_ref())
                .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut inflated)
                .map_err(|err| Error::BadRequest { what: "body".into(), reason: format!("not valid gzip: {err}") })?;
            if inflated.len() > limit {
                return Err(Error::TooLarge { what: "decompressed body".into(), limit });
            }
            Ok(Bytes::from(inflated))
        }
        Some(other) => Err(Error::UnsupportedEncoding(format!("{other:?}"))),
    }
}

/// Readiness, in InfluxDB's `/health` form: `pass`, or `fail` with 503 while every Kafka broker is
/// down (a load balancer then sends writes to another collector).
async fn ready(State(ingest): State<Ingest>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    if ingest.is_ready() {
        (StatusCode::OK, json, r#"{"status":"pass"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, json, r#"{"status":"fail","message":"every kafka broker is down"}"#)
    }
}

/// Liveness: the process serves HTTP.
async fn live() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"pass"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_fails_while_every_broker_is_down() {
        let sink = crate::kafka::tests::unreachable_sink(5, false, 60_000);
        let ingest = Ingest::new(Limits::default(), crate::config::AcceptPartial::default(), crate::auth::Auth::new(&[]), sink.clone(), false);
        let status = |ingest: Ingest| async move { ready(State(ingest)).await.into_response().status() };
        assert_eq!(status(ingest.clone()).await, StatusCode::OK);
        sink.set_down(true);
        assert_eq!(status(ingest.clone()).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(live().await.into_response().status(), StatusCode::OK, "alive all the same");
        sink.set_down(false);
        assert_eq!(status(ingest).await, StatusCode::OK);
    }
}
