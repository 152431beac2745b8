//! The analyzer gRPC service: forecasts from the trend models, recent anomaly scores, the alerts'
//! latest states and a resumable stream of their changes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::Stream;
use plumbing::kafka::KafkaSettings;
use proto::tonic::{Request, Response, Status};
use proto::v1::analyzer_service_server::AnalyzerService;
use proto::v1::{
    AlertEvent, AlertState, AnomalyScore, AnomalyScoresRequest, AnomalyScoresResponse, ForecastModel, ForecastRequest,
    ForecastResponse, ListAlertsRequest, ListAlertsResponse, Series, WatchAlertsRequest,
};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::alerts::{self, AlertBook, Position};
use crate::state::{Analysis, SeriesModels, TrendModel};

/// The interval's probability when a request leaves it 0.
const DEFAULT_CONFIDENCE: f64 = 0.95;

/// The key of a request's series, which must name a metric.
fn series_key(series: Option<&Series>) -> Result<String, Status> {
    let series = series.ok_or_else(|| Status::invalid_argument("series: must be set"))?;
    if series.metric.is_empty() {
        return Err(Status::invalid_argument("series.metric: must not be empty"));
    }
    Ok(series.key())
}

fn not_seen(key: &str) -> Status {
    Status::not_found(format!("series {key} has no windows yet"))
}

#[derive(Debug, Clone)]
pub(crate) struct Service {
    /// The analysis of windows, then that of the metrics modelled per point if any; a series is in one.
    pub(crate) analyses: Vec<Arc<Mutex<Analysis>>>,
    pub(crate) book: Arc<Mutex<AlertBook>>,
    /// Where watchers read alert changes.
    pub(crate) kafka: KafkaSettings,
    pub(crate) alerts_topic: String,
    /// Ends every watch stream, so that a graceful stop does not wait for watchers forever.
    pub(crate) shutdown: plumbing::Shutdown,
}

impl Service {
    /// `f` of the models of series `key`, from whichever analysis has it; NOT_FOUND if none has.
    fn with_series<T>(&self, key: &str, f: impl FnOnce(&SeriesModels) -> T) -> Result<T, Status> {
        for analysis in &self.analyses {
            let analysis = analysis.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = analysis.series(key) {
                return Ok(f(series));
            }
        }
        Err(not_seen(key))
    }
}

#[proto::tonic::async_trait]
impl AnalyzerService for Service {
    async fn forecast(&self, request: Request<ForecastRequest>) -> Result<Response<ForecastResponse>, Status> {
        let request = request.into_inner();
        let key = series_key(request.series.as_ref())?;
        if request.horizon_ns < 0 {
            return Err(Status::invalid_argument(format!("horizon_ns: {} must not be negative", request.horizon_ns)));
        }
        let confidence = if request.confidence == 0.0 { DEFAULT_CONFIDENCE } else { request.confidence };
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(Status::invalid_argument(format!("confidence: {confidence} is not between 0 and 1 (exclusive)")));
        }
        let (model, trend) = match ForecastModel::try_from(request.model) {
            Ok(ForecastModel::Unspecified | ForecastModel::Regression) => (ForecastModel::Regression, TrendModel::Regression),
            Ok(ForecastModel::Holt) => (ForecastModel::Holt, TrendModel::Holt),
            Err(_) => return Err(Status::invalid_argument(format!("model: {} is not a forecast model", request.model))),
        };
        let forecast = self.with_series(&key, |series| series.forecast(trend, request.horizon_ns, confidence))?;
        let forecast = forecast.map_err(|err| Status::failed_precondition(format!("series {key}: {err}")))?;
        Ok(Response::new(ForecastResponse {
            value: forecast.value,
            slope_per_second: forecast.slope_per_second,
            at_ns: forecast.at_ns,
            windows: u32::try_from(forecast.windows).unwrap_or(u32::MAX),
            lower: forecast.lower,
            upper: forecast.upper,
            model: model as i32,
            confidence,
        }))
    }

    async fn anomaly_scores(&self, request: Request<AnomalyScoresRequest>) -> Result<Response<AnomalyScoresResponse>, Status> {
        let request = request.into_inner();
        let key = series_key(request.series.as_ref())?;
        let end_ns = if request.end_ns == 0 { i64::MAX } else { request.end_ns };
        if end_ns < request.start_ns {
            return Err(Status::invalid_argument(format!("end_ns: {} is before start_ns {}", request.end_ns, request.start_ns)));
        }
        let response = self.with_series(&key, |series| AnomalyScoresResponse {
            scores: series
                .scores(request.start_ns, end_ns)
                .map(|s| AnomalyScore { window_start_ns: s.start_ns, window_end_ns: s.end_ns, mean: s.mean, score: s.score })
                .collect(),
            detector: series.detector().name().to_owned(),
        })?;
        Ok(Response::new(response))
    }

    async fn list_alerts(&self, request: Request<ListAlertsRequest>) -> Result<Response<ListAlertsResponse>, Status> {
        let request = request.into_inner();
        if AlertState::try_from(request.state).is_err() {
            return Err(Status::invalid_argument(format!("state: {} is not an alert state", request.state)));
        }
        let (alerts, truncated) = self.book.lock().unwrap_or_else(PoisonError::into_inner).list(&request);
        Ok(Response::new(ListAlertsResponse { alerts, truncated }))
    }

    type WatchAlertsStream = Pin<Box<dyn Stream<Item = Result<AlertEvent, Status>> + Send + 'static>>;

    async fn watch_alerts(&self, request: Request<WatchAlertsRequest>) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let token = request.into_inner().resume_token;
        let position = if token.is_empty() {
            None
        } else {
            Some(Position::parse(&token).map_err(|problem| Status::invalid_argument(format!("resume_token: {problem}")))?)
        };
        let events = alerts::watch(&self.kafka, &self.alerts_topic, position, self.shutdown.clone()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(events).map(|event| event.map_err(Status::from)))))
    }
}
