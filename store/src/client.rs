//! What a client of `QueryService` needs beyond the generated stub: a `Sql` answer as record batches,
//! and the stored aggregates in the order the analyzer read them (for backtests).

use arrow::array::RecordBatch;
use proto::tonic::transport::Channel;
use proto::v1::SqlRequest;
use proto::v1::query_service_client::QueryServiceClient;

use crate::segment::{Located, SegmentError, batch_to_aggregates};

/// Why a query's answer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the store refused: {0}")]
    Status(#[from] proto::tonic::Status),
    #[error("the answer is not an Arrow IPC stream: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("the answer is not aggregates: {0}")]
    Segment(#[from] SegmentError),
}

/// The answer of `query` as record batches.
pub async fn sql(client: &mut QueryServiceClient<Channel>, query: &str) -> Result<Vec<RecordBatch>, ClientError> {
    let mut stream = client.sql(SqlRequest { query: query.into() }).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend(chunk.arrow_ipc);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<_, _>>()?)
}

/// Every stored window that started in `[start_ns, end_ns)`, of every series, in the order of the
/// aggregates topic: by partition, then offset. That is the order the analyzer read them in, so a
/// replay through its models meets each partition's event time as the live analyzer did. Asks for
/// `page` rows at a time (keyset pagination on partition and offset), so that no answer exceeds the
/// store's `query.max_rows`.
pub async fn aggregates(client: &mut QueryServiceClient<Channel>, start_ns: i64, end_ns: i64, page: usize) -> Result<Vec<Located>, ClientError> {
    let page = page.max(1);
    let mut located: Vec<Located> = Vec::new();
    loop {
        let after = match located.last() {
            Some(last) => format!(
                "AND (kafka_partition > {p} OR (kafka_partition = {p} AND kafka_offset > {o}))",
                p = last.partition,
                o = last.offset
            ),
            None => String::new(),
        };
        let query = format!(
            "SELECT * FROM aggregates WHERE start_ns >= {start_ns} AND start_ns < {end_ns} {after} \
             ORDER BY kafka_partition, kafka_offset LIMIT {page}"
        );
        let before = located.len();
        for batch in sql(client, &query).await? {
            located.extend(batch_to_aggregates(&batch)?);
        }
        if located.len() - before < page {
            return Ok(located);
        }
    }
}
