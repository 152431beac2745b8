//! The query gRPC service: validates a request, reads a snapshot of a table, and computes the answer
//! on a blocking thread, within the configured limits.

use std::sync::Arc;
use std::time::Instant;

use plumbing::ops::Seconds;

use proto::tonic::{Request, Response, Status};
use proto::v1::query_service_server::QueryService;
use proto::v1::{
    LatestRequest, LatestResponse, ListSeriesRequest, ListSeriesResponse, RangeRequest, RangeResponse, Sample,
    SeriesSelector, SeriesWindows, SqlRequest, SqlResponse, Statistic,
};

use crate::config::QueryLimits;
use crate::error::{Error, Result};
use crate::range::{latest, rows_in, series_in, windows_in_range};
use crate::rollup;
use crate::select::Selector;
use crate::sql;
use crate::table::{Snapshot, Table};

/// The page size of `ListSeries` when the request names none.
const DEFAULT_PAGE_SIZE: u32 = 1_000;

#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// The table `Range`, `Latest` and `ListSeries` read.
    table: Arc<Table>,
    tables: sql::Tables,
    limits: QueryLimits,
    executor: Arc<sql::Executor>,
    metrics: Arc<QueryMetrics>,
}

/// How long each query method took, answered or refused; an SQL query's time runs until its last
/// batch was handed to the caller.
#[derive(Debug, Default)]
pub(crate) struct QueryMetrics {
    pub(crate) range: Seconds,
    pub(crate) latest: Seconds,
    pub(crate) list_series: Seconds,
    pub(crate) sql: Seconds,
}

impl QueryMetrics {
    pub(crate) fn by_method(&self) -> [(&'static str, &Seconds); 4] {
        [("Range", &self.range), ("Latest", &self.latest), ("ListSeries", &self.list_series), ("Sql", &self.sql)]
    }
}

/// Observes the time from its creation until it drops into `histogram`, however the call ends.
struct Timed<'a>(&'a Seconds, Instant);

impl<'a> Timed<'a> {
    fn start(histogram: &'a Seconds) -> Self {
        Self(histogram, Instant::now())
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed());
    }
}

impl Query {
    pub(crate) fn new(tables: sql::Tables, limits: QueryLimits, executor: Arc<sql::Executor>, metrics: Arc<QueryMetrics>) -> Self {
        Self { table: Arc::clone(&tables.aggregates), tables, limits, executor, metrics }
    }

    /// Reads the records of `[from_ns, to_ns)` and computes `answer` from them, within the query time.
    async fn answer<T: Send + 'static>(
        &self,
        from_ns: i64,
        to_ns: i64,
        tier: Option<usize>,
        answer: impl FnOnce(Snapshot) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let work = async {
            let snapshot = self.table.snapshot(from_ns, to_ns, tier).await?;
            tokio::task::spawn_blocking(move || answer(snapshot)).await?
        };
        tokio::time::timeout(self.limits.timeout, work).await.map_err(|_| Error::Timeout(self.limits.timeout))?
    }
}

impl Query {
    /// `response`, unless its encoding is larger than the limit.
    fn bounded<M: proto::prost::Message>(&self, response: M) -> Result<M> {
        let limit = self.limits.max_response_bytes;
        if response.encoded_len() > limit {
            return Err(Error::TooLarge { what: "the answer's size in bytes", limit: limit as u64 });
        }
        Ok(response)
    }
}

fn selector(selector: Option<SeriesSelector>, metric_required: bool) -> Result<Selector> {
    let selector = selector.unwrap_or_default();
    if metric_required && selector.metric.is_empty() {
        return Err(Error::invalid("selector.metric", "must not be empty"));
    }
    Selector::compile(&selector)
}

/// The checked shape of a `Range`.
struct RangeQuery {
    selector: Selector,
    start_ns: i64,
    end_ns: i64,
    step_ns: i64,
    statistic: Statistic,
    quantile: f64,
}

impl RangeQuery {
    fn parse(request: RangeRequest, limits: &QueryLimits) -> Result<Self> {
        let selector = selector(request.selector, true)?;
        let (start_ns, end_ns) = (request.start_ns, request.end_ns);
        if end_ns <= start_ns {
            return Err(Error::invalid("end_ns", format!("{end_ns} must be greater than start_ns {start_ns}")));
        }
        let max_range = i64::try_from(limits.max_range.as_nanos()).unwrap_or(i64::MAX);
        if end_ns.abs_diff(start_ns) > max_range.unsigned_abs() {
            return Err(Error::invalid("end_ns", format!("the range is longer than the limit of {:?}", limits.max_range)));
        }
        if request.step_ns < 0 {
            return Err(Error::invalid("step_ns", format!("{} must not be negative", request.step_ns)));
        }
        let statistic = Statistic::try_from(request.statistic)
            .map_err(|_| Error::invalid("statistic", format!("unknown statistic {}", request.statistic)))?;
        let quantile = request.quantile;
        if statistic == Statistic::Quantile && !(0.0..=1.0).contains(&quantile) {
            return Err(Error::invalid("quantile", format!("{quantile} must lie in [0, 1]")));
        }
        let step_ns = request.step_ns;
        // With a step the range covers whole steps, so that a tier (whose rows are whole steps) and the
        // raw windows give the same answer.
        let (start_ns, end_ns) = if step_ns > 0 {
            let end_steps = end_ns.div_euclid(step_ns) + i64::from(end_ns.rem_euclid(step_ns) != 0);
            (start_ns.div_euclid(step_ns).saturating_mul(step_ns), end_steps.saturating_mul(step_ns))
        } else {
            (start_ns, end_ns)
        };
        Ok(Self { selector, start_ns, end_ns, step_ns, statistic, quantile })
    }

    /// The coarsest tier whose step divides this query's step.
    fn tier(&self, tiers: &[crate::table::Tier]) -> Option<usize> {
        (self.step_ns > 0).then_some(())?;
        tiers.iter().rposition(|t| self.step_ns % t.step_ns == 0)
    }

    fn run(self, snapshot: Snapshot, limits: &QueryLimits) -> Result<RangeResponse> {
        let Self { selector, start_ns, end_ns, step_ns, statistic, quantile } = self;
        let mut rows = Vec::new();
        let mut rolled = Vec::new();
        for (batch, tier) in snapshot.segments.iter().map(|b| (b, false)).chain(snapshot.tier_segments.iter().map(|b| (b, true))) {
            let read = rows_in(batch, &selector, start_ns, end_ns)?;
            if tier { rolled.extend(read) } else { rows.extend(read) }
            if (rows.len() + rolled.len()) as u64 > limits.max_windows {
                return Err(Error::TooLarge { what: "the windows read", limit: limits.max_windows });
            }
        }
        // Raw windows once each; a tier's rows all, since several may be parts of one step.
        let mut series = windows_in_range(&rows, &selector, start_ns, end_ns);
        if !rolled.is_empty() {
            let mut by_key: std::collections::BTreeMap<String, SeriesWindows> =
                series.into_iter().filter_map(|s| Some((s.series.as_ref()?.key(), s))).collect();
            for row in rolled {
                let (Some(s), Some(window)) = (row.aggregate.series, row.aggregate.window) else { continue };
                let entry = by_key.entry(s.key()).or_insert_with(|| SeriesWindows { series: Some(s), windows: Vec::new(), samples: Vec::new() });
                entry.windows.push(window);
            }
            series = by_key.into_values().collect();
            for s in &mut series {
                s.windows.sort_by_key(|w| w.start_ns);
            }
        }
        if series.len() as u64 > limits.max_series {
            return Err(Error::TooLarge { what: "the series selected", limit: limits.max_series });
        }
        let windows: u64 = series.iter().map(|s| s.windows.len() as u64).sum();
        if windows > limits.max_windows {
            return Err(Error::TooLarge { what: "the windows read", limit: limits.max_windows });
        }
        for s in &mut series {
            if step_ns > 0 {
                s.windows = rollup::by_step(&s.windows, step_ns);
            }
            if statistic != Statistic::Unspecified {
                s.samples = s
                    .windows
                    .iter()
                    .filter_map(|w| rollup::statistic(w, statistic, quantile).map(|value| Sample { start_ns: w.start_ns, value }))
                    .collect();
                s.windows.clear();
            }
        }
        Ok(RangeResponse { series })
    }
}

#[proto::tonic::async_trait]
impl QueryService for Query {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let _timed = Timed::start(&self.metrics.range);
        let query = RangeQuery::parse(request.into_inner(), &self.limits)?;
        let limits = self.limits.clone();
        let (start, end) = (query.start_ns, query.end_ns);
        let tier = query.tier(&self.table.tiers);
        let response = self.answer(start, end, tier, move |snapshot| query.run(snapshot, &limits)).await?;
        Ok(Response::new(self.bounded(response)?))
    }

    async fn latest(&self, request: Request<LatestRequest>) -> Result<Response<LatestResponse>, Status> {
        let _timed = Timed::start(&self.metrics.latest);
        let selector = selector(request.into_inner().selector, true)?;
        let max_series = self.limits.max_series;
        let series = self
            .answer(i64::MIN, i64::MAX, None, move |snapshot| {
                // Per segment only each series' latest window, so the rows kept stay few.
                let mut candidates = Vec::new();
                for batch in &snapshot.segments {
                    let rows = rows_in(batch, &selector, i64::MIN, i64::MAX)?;
                    candidates.extend(latest(&rows, &selector).into_values().cloned());
                }
                let series: Vec<SeriesWindows> = latest(&candidates, &selector)
                    .into_values()
                    .map(|row| SeriesWindows {
                        series: row.aggregate.series.clone(),
                        windows: row.aggregate.window.iter().cloned().collect(),
                        samples: Vec::new(),
                    })
                    .collect();
                if series.len() as u64 > max_series {
                    return Err(Error::TooLarge { what: "the series selected", limit: max_series });
                }
                Ok(series)
            })
            .await?;
        Ok(Response::new(self.bounded(LatestResponse { series })?))
    }

    async fn list_series(&self, request: Request<ListSeriesRequest>) -> Result<Response<ListSeriesResponse>, Status> {
        let _timed = Timed::start(&self.metrics.list_series);
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if u64::from(n) > self.limits.max_series => {
                return Err(Error::invalid("page_size", format!("{n} is above the limit of {}", self.limits.max_series)).into());
            }
            n => n,
        };
        let selector = selector(request.selector, false)?;
        let after = request.page_token;
        let response = self
            .answer(i64::MIN, i64::MAX, None, move |snapshot| {
                let mut found = std::collections::BTreeMap::new();
                for batch in &snapshot.segments {
                    found.extend(series_in(batch, &selector)?);
                }
                let mut page = found.range::<String, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded));
                let series: Vec<_> = page.by_ref().take(page_size as usize).map(|(_, s)| s.clone()).collect();
                let next_page_token = match page.next() {
                    Some(_) => series.last().map(proto::v1::Series::key).unwrap_or_default(),
                    None => String::new(),
                };
                Ok(ListSeriesResponse { series, next_page_token })
            })
            .await?;
        Ok(Response::new(self.bounded(response)?))
    }

    type SqlStream = futures::stream::BoxStream<'static, Result<SqlResponse, Status>>;

    async fn sql(&self, request: Request<SqlRequest>) -> Result<Response<Self::SqlStream>, Status> {
        let query = request.into_inner().query;
        if query.trim().is_empty() {
            return Err(Error::invalid("query", "must not be empty").into());
        }
        let (limits, tables, metrics) = (self.limits.clone(), self.tables.clone(), Arc::clone(&self.metrics));
        let timeout = limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (planned_tx, planned) = tokio::sync::oneshot::channel::<Result<()>>();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        // The query runs on the SQL executor; this side keeps the deadline, which a query busy with
        // its CPU could not keep itself.
        let task = self.executor.spawn(async move {
            let _timed = Timed::start(&metrics.sql);
            let planned = async { sql::plan(&sql::session(&tables, limits.sql_memory_bytes)?, &query).await }.await;
            let batches = match planned {
                Ok(batches) => batches,
                Err(err) => {
                    let _ = planned_tx.send(Err(err));
                    return;
                }
            };
            let _ = planned_tx.send(Ok(()));
            if let Err(err) = stream_ipc(batches, &limits, &sender).await {
                // The caller may have gone; then nobody is left to tell.
                let _ = sender.send(Err(err.into())).await;
            }
        });
        let task = AbortOnDrop(task.abort_handle());
        // Planning errors are answered as the call's status; what fails later ends the stream.
        match tokio::time::timeout_at(deadline, planned).await {
            Err(_) => return Err(Error::Timeout(timeout).into()),
            Ok(Err(_)) => return Err(Error::Internal("the query task ended before planning".to_owned()).into()),
            Ok(Ok(Err(err))) => return Err(err.into()),
            Ok(Ok(Ok(()))) => {}
        }
        let stream = futures::stream::unfold(Some((receiver, task)), move |state| async move {
            let (mut receiver, task) = state?;
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(item)) => Some((item, Some((receiver, task)))),
                Ok(None) => None,
                // The task is aborted as `task` drops here.
                Err(_) => Some((Err(Error::Timeout(timeout).into()), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Aborts a task when dropped: a query whose caller has gone or whose time is up stops at its next
/// yield instead of running on.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `batches` as chunks of one Arrow IPC stream (the schema first), within the row and size
/// limits; stops early when the caller has gone.
async fn stream_ipc(
    mut batches: datafusion::execution::SendableRecordBatchStream,
    limits: &QueryLimits,
    sender: &tokio::sync::mpsc::Sender<Result<SqlResponse, Status>>,
) -> Result<()> {
    use datafusion::arrow::ipc::writer::StreamWriter;
    use futures::StreamExt as _;

    let ipc_error = |err: datafusion::arrow::error::ArrowError| Error::Segment(crate::segment::SegmentError::Arrow(err));
    let mut writer = StreamWriter::try_new(Vec::new(), &batches.schema()).map_err(ipc_error)?;
    let (mut rows, mut bytes) = (0u64, 0usize);
    let mut send = async |chunk: Vec<u8>| -> Result<bool> {
        bytes += chunk.len();
        if bytes > limits.max_response_bytes {
            return Err(Error::TooLarge { what: "the answer's size in bytes", limit: limits.max_response_bytes as u64 });
        }
        Ok(sender.send(Ok(SqlResponse { arrow_ipc: chunk })).await.is_ok())
    };
    if !send(std::mem::take(writer.get_mut())).await? {
        return Ok(());
    }
    loop {
        let Some(batch) = batches.next().await else { break };
        let batch = batch.map_err(sql::sql_error)?;
        rows += batch.num_rows() as u64;
        if rows > limits.max_rows {
            return Err(Error::TooLarge { what: "the rows of the answer", limit: limits.max_rows });
        }
        writer.write(&batch).map_err(ipc_error)?;
        if !send(std::mem::take(writer.get_mut())).await? {
            return Ok(());
        }
    }
    writer.finish().map_err(ipc_error)?;
    send(std::mem::take(writer.get_mut())).await?;
    Ok(())
}
