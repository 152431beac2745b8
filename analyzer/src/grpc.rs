//! The analyzer gRPC service: forecasts from the trend models and a live stream of alert changes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use proto::tonic::{Request, Response, Status};
use proto::v1::analyzer_service_server::AnalyzerService;
use proto::v1::{Alert, ForecastRequest, ForecastResponse, WatchAlertsRequest};
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::state::Analysis;

#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) analysis: Arc<Mutex<Analysis>>,
    pub(crate) alerts: broadcast::Sender<Alert>,
    /// Ends every watch stream, so that a graceful stop does not wait for watchers forever.
    pub(crate) shutdown: plumbing::Shutdown,
}

#[proto::tonic::async_trait]
impl AnalyzerService for Service {
    async fn forecast(&self, request: Request<ForecastRequest>) -> Result<Response<ForecastResponse>, Status> {
        let request = request.into_inner();
        let Some(series) = request.series else {
            return Err(Status::invalid_argument("series: must be set"));
        };
        if series.metric.is_empty() {
            return Err(Status::invalid_argument("series.metric: must not be empty"));
        }
        if request.horizon_ns < 0 {
            return Err(Status::invalid_argument(format!("horizon_ns: {} must not be negative", request.horizon_ns)));
        }
        let key = series.key();
        let analysis = self.analysis.lock().unwrap_or_else(PoisonError::into_inner);
        let trend = analysis.trend(&key).ok_or_else(|| Status::not_found(format!("series {key} has no windows yet")))?;
        let forecast = trend
            .forecast(request.horizon_ns, 0.95)
            .map_err(|err| Status::failed_precondition(format!("series {key}: {err}")))?;
        Ok(Response::new(ForecastResponse {
            value: forecast.value,
            slope_per_second: forecast.slope_per_second,
            at_ns: forecast.at_ns,
            windows: u32::try_from(forecast.windows).unwrap_or(u32::MAX),
        }))
    }

    type WatchAlertsStream = Pin<Box<dyn Stream<Item = Result<Alert, Status>> + Send + 'static>>;

    async fn watch_alerts(
        &self,
        _request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let stream = BroadcastStream::new(self.alerts.subscribe()).map(|item| {
            item.map_err(|BroadcastStreamRecvError::Lagged(missed)| {
                // Ends the stream: a watcher must know it missed alerts rather than see a silent gap.
                Status::data_loss(format!("the watcher fell behind and missed {missed} alerts; read {} to catch up", plumbing::kafka::topics::ALERTS))
            })
        });
        Ok(Response::new(Box::pin(futures::StreamExt::take_until(stream, self.shutdown.clone().cancelled_owned()))))
    }
}
