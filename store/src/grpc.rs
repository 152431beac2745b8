//! The query gRPC service: validates a request, then reads the storage on a blocking thread.

use std::sync::Arc;

use proto::tonic::{Request, Response, Status};
use proto::v1::query_service_server::QueryService;
use proto::v1::{ListSeriesRequest, ListSeriesResponse, RangeRequest, RangeResponse};

use crate::error::{Error, Result};
use crate::select::Selector;
use crate::storage::Storage;

#[derive(Debug, Clone)]
pub(crate) struct Query {
    storage: Arc<Storage>,
}

impl Query {
    pub(crate) fn new(storage: Arc<Storage>) -> Self {
        Self { storage }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Storage) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || read(&storage)).await?
    }
}

#[proto::tonic::async_trait]
impl QueryService for Query {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        let selector = request.selector.unwrap_or_default();
        if selector.metric.is_empty() {
            return Err(Error::invalid("selector.metric", "must not be empty").into());
        }
        if request.end_ns <= request.start_ns {
            return Err(Error::invalid(
                "end_ns",
                format!("{} must be greater than start_ns {}", request.end_ns, request.start_ns),
            )
            .into());
        }
        let selector = Selector::compile(&selector)?;
        let series = self.blocking(move |s| s.range(&selector, request.start_ns, request.end_ns)).await?;
        Ok(Response::new(RangeResponse { series }))
    }

    async fn list_series(
        &self,
        request: Request<ListSeriesRequest>,
    ) -> Result<Response<ListSeriesResponse>, Status> {
        let selector = Selector::compile(&request.into_inner().selector.unwrap_or_default())?;
        let found = self.blocking(move |s| s.series(&selector)).await?;
        Ok(Response::new(ListSeriesResponse { series: found.into_iter().map(|(_, series)| series).collect() }))
    }
}
