//! SQL over the store's tables with DataFusion. Each table is a provider that scans a snapshot of the
//! same segments and memory the other queries read, pruned by the time bounds of the query's filters
//! and answered once per window; results stream back as Arrow IPC. Errors a caller can act on (bad
//! syntax, an unknown column, a type mismatch) are told apart from internals, which stay in the log.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array as _, AsArray as _, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::parser::ParserError;

use crate::error::{Error, Result};
use crate::rollup::{self, Rows};
use crate::segment::{Kind, concat};
use crate::table::{Snapshot, Table};

/// The store's tables, one per kind of record.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) points: Arc<Table>,
    pub(crate) aggregates: Arc<Table>,
    pub(crate) alerts: Arc<Table>,
}

/// A runtime of its own for SQL: a CPU-bound query runs there, never on the threads that ingest and
/// answer the other queries.
#[derive(Debug)]
pub(crate) struct Executor(Option<tokio::runtime::Runtime>);

impl Executor {
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("runnel-sql")
            .enable_time()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    pub(crate) fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(runtime) => runtime.spawn(work),
            // Only `drop` takes the runtime, and nothing spawns on a value being dropped.
            None => unreachable!("the SQL executor is gone"),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; its queries are abandoned anyway.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A session over the store's tables (`points`, `aggregates` and each of its tiers, `alerts`):
/// read-only, with at most `memory_bytes` of working memory.
pub(crate) fn session(tables: &Tables, memory_bytes: usize) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(memory_bytes, 1.0).build_arc().map_err(sql_error)?;
    let config = SessionConfig::new().with_information_schema(true).with_target_partitions(2);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for table in [&tables.points, &tables.aggregates, &tables.alerts] {
        let provider = Provider { table: Arc::clone(table), schema: table.record.schema(), tier: None };
        ctx.register_table(table.kind.as_str(), Arc::new(provider)).map_err(sql_error)?;
    }
    let aggregates = &tables.aggregates;
    for (t, tier) in aggregates.tiers.iter().enumerate() {
        let provider = Provider { table: Arc::clone(aggregates), schema: aggregates.record.schema(), tier: Some(t) };
        ctx.register_table(tier.kind.as_str(), Arc::new(provider)).map_err(sql_error)?;
    }
    Ok(ctx)
}

/// Plans `query` in `ctx`, refusing anything but reading (no DDL, DML or `SET`).
pub(crate) async fn plan(ctx: &SessionContext, query: &str) -> Result<SendableRecordBatchStream> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx.sql_with_options(query, options).await.map_err(sql_error)?;
    frame.execute_stream().await.map_err(sql_error)
}

/// A table: points or alerts (each record once), aggregates (one row per series and window, the last
/// delivered), or a tier of the aggregates (one row per series and step, its windows merged).
#[derive(Debug)]
struct Provider {
    table: Arc<Table>,
    schema: SchemaRef,
    tier: Option<usize>,
}

#[async_trait::async_trait]
impl TableProvider for Provider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: the bounds only choose segments; DataFusion still filters every row.
        let time = self.table.record.time_column();
        Ok(filters
            .iter()
            .map(|f| if time_bounds(f, time).is_some() { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let time = self.table.record.time_column();
        let (from, to) = filters.iter().filter_map(|f| time_bounds(f, time)).fold((i64::MIN, i64::MAX), |(lo, hi), (a, b)| (lo.max(a), hi.min(b)));
        let external = |err: Error| DataFusionError::External(Box::new(err));
        let snapshot = self.table.snapshot(from, to, self.tier).await.map_err(external)?;
        let batches = match self.tier.and_then(|t| self.table.tiers.get(t)) {
            None if self.table.record == Kind::Aggregates => once_each(snapshot).map_err(external)?,
            // Every offset is read once, and a point or an alert has no identity beyond its offset.
            None => snapshot.segments.iter().map(|b| RecordBatch::clone(b)).collect(),
            Some(tier) => {
                let step = tier.step_ns;
                let rolled = tokio::task::spawn_blocking(move || rolled_up(snapshot, step)).await.map_err(|e| external(e.into()))?;
                rolled.map_err(external)?
            }
        };
        // Two partitions, one per core, each a share of the batches.
        let mut partitions = vec![Vec::new(), Vec::new()];
        for (i, batch) in batches.into_iter().enumerate() {
            partitions[i % 2].push(batch);
        }
        Ok(MemorySourceConfig::try_new_exec(&partitions, Arc::clone(&self.schema), projection.cloned())?)
    }
}

/// The time range `[from, to)` a filter confines the column `time` to, if it is a comparison of that
/// column with an integer.
fn time_bounds(filter: &Expr, time: &str) -> Option<(i64, i64)> {
    let column = |e: &Expr| matches!(e, Expr::Column(c) if c.name == time);
    let literal = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Int64(Some(v)), _) => Some(*v),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, v) = if column(left) {
                (*op, literal(right)?)
            } else if column(right) {
                (op.swap()?, literal(left)?)
            } else {
                return None;
            };
            match op {
                Operator::Eq => Some((v, v.saturating_add(1))),
                Operator::Gt => Some((v.saturating_add(1), i64::MAX)),
                Operator::GtEq => Some((v, i64::MAX)),
                Operator::Lt => Some((i64::MIN, v)),
                Operator::LtEq => Some((i64::MIN, v.saturating_add(1))),
                _ => None,
            }
        }
        Expr::Between(Between { expr, negated: false, low, high }) if column(expr) => {
            Some((literal(low)?, literal(high)?.saturating_add(1)))
        }
        _ => None,
    }
}

/// The batches of a snapshot with each (series, window start) once: the copy delivered last (the
/// highest offset), as `Range` answers.
fn once_each(snapshot: Snapshot) -> Result<Vec<RecordBatch>> {
    keep_last(snapshot.segments.iter().map(|b| RecordBatch::clone(b)).collect())
}

/// `batches` with each (series, start) once: the row with the highest offset.
fn keep_last(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let column = |batch: &RecordBatch, name: &'static str| {
        batch.column_by_name(name).cloned().ok_or(crate::segment::SegmentError::Column(name))
    };
    let mut columns = Vec::with_capacity(batches.len());
    for batch in &batches {
        columns.push((column(batch, "series")?, column(batch, Kind::Aggregates.time_column())?, column(batch, "kafka_offset")?));
    }
    // The winner of each key: (batch, row, offset).
    let mut winners: HashMap<(&str, i64), (usize, usize, i64)> = HashMap::new();
    let mut rows = 0;
    for (b, (series, starts, offsets)) in columns.iter().enumerate() {
        let (series, starts, offsets) = (series.as_string::<i32>(), starts.as_primitive::<Int64Type>(), offsets.as_primitive::<Int64Type>());
        rows += series.len();
        for i in 0..series.len() {
            let offset = offsets.value(i);
            let slot = winners.entry((series.value(i), starts.value(i))).or_insert((b, i, offset));
            if offset > slot.2 {
                *slot = (b, i, offset);
            }
        }
    }
    if winners.len() == rows {
        return Ok(batches);
    }
    let mut keep: Vec<Vec<bool>> = batches.iter().map(|b| vec![false; b.num_rows()]).collect();
    for (b, i, _) in winners.into_values() {
        keep[b][i] = true;
    }
    drop(columns);
    batches
        .iter()
        .zip(keep)
        .map(|(batch, keep)| Ok(datafusion::arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep)).map_err(crate::segment::SegmentError::from)?))
        .collect()
}

/// A tier snapshot as batches of whole steps: its rows merged with the raw windows it has not rolled up
/// yet.
fn rolled_up(snapshot: Snapshot, step_ns: i64) -> Result<Vec<RecordBatch>> {
    // Nothing raw left and every step in one row (compaction made them whole): the batches as they are.
    if snapshot.segments.is_empty() {
        let batches: Vec<RecordBatch> = snapshot.tier_segments.iter().map(|b| RecordBatch::clone(b)).collect();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let kept = keep_last(batches.clone())?;
        if kept.iter().map(RecordBatch::num_rows).sum::<usize>() == rows {
            return Ok(batches);
        }
    }
    let mut parts: Vec<RecordBatch> = snapshot.tier_segments.iter().map(|b| RecordBatch::clone(b)).collect();
    parts.push(rollup::roll_up(&concat(Kind::Aggregates, &snapshot.segments)?, step_ns, Rows::Windows)?);
    Ok(vec![rollup::roll_up(&concat(Kind::Aggregates, &parts)?, step_ns, Rows::Parts)?])
}

/// What a caller should hear of a DataFusion error.
pub(crate) fn sql_error(err: DataFusionError) -> Error {
    match strip(err) {
        // The store's own errors come back wrapped: unwrapped, they keep their status.
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Internal(other.to_string()),
        },
        DataFusionError::SQL(parser, _) => Error::invalid("query", format!("syntax error: {}", parser_message(&parser))),
        user @ (DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..)) => Error::invalid("query", user.strip_backtrace()),
        DataFusionError::ResourcesExhausted(message) => Error::Exhausted(message),
        other => Error::Internal(other.strip_backtrace()),
    }
}

/// `err` without the wrappers that add context: the error that caused it.
fn strip(err: DataFusionError) -> DataFusionError {
    match err {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => strip(*inner),
        DataFusionError::Shared(shared) => Arc::try_unwrap(shared).map_or_else(|s| DataFusionError::Execution(s.strip_backtrace()), strip),
        DataFusionError::Collection(mut all) if !all.is_empty() => strip(all.swap_remove(0)),
        other => other,
    }
}

fn parser_message(err: &ParserError) -> String {
    match err {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "the query nests too deeply".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    async fn error_of(query: &str) -> Error {
        let dir = std::env::temp_dir().join(format!("runnel-sql-{}-{:?}", std::process::id(), std::time::SystemTime::now()));
        let objects = crate::objects::Objects::local(&dir).unwrap();
        let table = |kind: Kind| Arc::new(Table::new(kind, kind.name().into(), 0, objects.clone(), Vec::new(), 1 << 20));
        let tables = Tables { points: table(Kind::Points), aggregates: table(Kind::Aggregates), alerts: table(Kind::Alerts) };
        let ctx = session(&tables, 64 << 20).unwrap();
        let result = plan(&ctx, query).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(_) => panic!("{query} was planned"),
            Err(err) => err,
        }
    }

    #[tokio::test]
    async fn errors_name_the_problem() {
        let unknown = error_of("SELECT nonsense FROM aggregates").await.to_string();
        assert!(unknown.starts_with("query: ") && unknown.contains("nonsense"), "{unknown}");
        let syntax = error_of("SELEC 1").await.to_string();
        assert!(syntax.starts_with("query: syntax error"), "{syntax}");
        for refused in ["DROP TABLE aggregates", "CREATE TABLE t (a INT)", "SET datafusion.execution.batch_size = 1"] {
            assert!(matches!(error_of(refused).await, Error::InvalidQuery { .. }), "{refused}");
        }
    }

    #[test]
    fn comparisons_of_the_time_column_bound_the_scan() {
        assert_eq!(time_bounds(&col("start_ns").gt_eq(lit(10i64)), "start_ns"), Some((10, i64::MAX)));
        assert_eq!(time_bounds(&col("start_ns").lt(lit(20i64)), "start_ns"), Some((i64::MIN, 20)));
        assert_eq!(time_bounds(&lit(20i64).gt(col("start_ns")), "start_ns"), Some((i64::MIN, 20)), "the literal on the left");
        assert_eq!(time_bounds(&col("start_ns").eq(lit(5i64)), "start_ns"), Some((5, 6)));
        assert_eq!(time_bounds(&col("start_ns").between(lit(5i64), lit(9i64)), "start_ns"), Some((5, 10)));
        assert_eq!(time_bounds(&col("end_ns").gt(lit(5i64)), "start_ns"), None, "another column");
        assert_eq!(time_bounds(&col("start_ns").gt(lit(5.5)), "start_ns"), None, "not an integer");
        assert_eq!(time_bounds(&col("start_ns").not_eq(lit(5i64)), "start_ns"), None);
    }
}
