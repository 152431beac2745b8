//! gRPC serving: bind first (port 0 allowed, the bound address is known before serving), then serve a
//! tonic router until shutdown, letting in-flight calls finish. Every server also answers the gRPC
//! health checking protocol (`grpc.health.v1.Health`, for load balancers and orchestrators) and server
//! reflection (v1 and v1alpha, so that `grpcurl` needs no `.proto` files).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
pub use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::Shutdown;
use crate::ops::Readiness;

/// A bound, not yet serving, gRPC listener.
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
    health: HealthReporter,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Sets what the server's health service answers: overall (the empty service name, what most load
/// balancers ask) and per gRPC service.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Health")
    }
}

impl Health {
    /// Sets the status of `service` (a full gRPC service name, or "" for the server as a whole).
    pub async fn set(&self, service: &str, status: ServingStatus) {
        self.0.set_service_status(service, status).await;
    }

    /// What the health service answers for `service`; none for a service it does not know.
    pub async fn status(&self, service: &str) -> Option<ServingStatus> {
        use tonic_health::pb::health_server::Health as _;
        let request = proto::tonic::Request::new(tonic_health::pb::HealthCheckRequest { service: service.to_owned() });
        let reply = HealthService::from_health_reporter(self.0.clone()).check(request).await.ok()?;
        Some(match reply.into_inner().status() {
            tonic_health::pb::health_check_response::ServingStatus::Serving => ServingStatus::Serving,
            _ => ServingStatus::NotServing,
        })
    }
}

impl Listener {
    /// Binds `addr`; with port 0 the OS picks a free port, see [`Listener::local_addr`].
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // The reporter answers SERVING for the server as a whole until told otherwise.
        let health = HealthReporter::new();
        Ok(Self { listener, addr, health })
    }

    /// A health handle of its own, for code that reports health without a listener (tests).
    pub fn standalone_health() -> Health {
        Health(HealthReporter::new())
    }

    /// The handle that sets what the health service answers.
    pub fn health(&self) -> Health {
        Health(self.health.clone())
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router`, which holds the gRPC services named `services`, until `shutdown` is cancelled,
    /// then stops accepting and waits for in-flight calls. The health service reports the server as
    /// a whole and each of `services` SERVING while `readiness` says ready and NOT_SERVING otherwise
    /// (so not before the service is first ready); reflection lists them (and describes those of
    /// Runnel's contract).
    pub async fn serve(
        self,
        router: proto::tonic::transport::server::Router,
        services: &[&str],
        readiness: Readiness,
        shutdown: Shutdown,
    ) -> Result<(), proto::tonic::transport::Error> {
        tracing::info!(addr = %self.addr, "grpc serving");
        let names: Vec<String> = std::iter::once("").chain(services.iter().copied()).map(str::to_owned).collect();
        for name in &names {
            self.health.set_service_status(name, ServingStatus::NotServing).await;
        }
        let reflection = || {
            let standard = [HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA];
            services.iter().chain(&standard).fold(reflection(), |builder, name| builder.with_service_name(*name))
        };
        let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
            // The descriptor sets are compiled in; one that does not decode is a build defect.
            (Err(err), _) | (_, Err(err)) => panic!("the compiled-in descriptor sets do not decode: {err}"),
        };
        let health = self.health.clone();
        let serving = router
            .add_service(HealthServer::new(HealthService::from_health_reporter(self.health)))
            .add_service(v1)
            .add_service(v1alpha)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown.cancelled_owned());
        let following = async {
            let mut changes = readiness.watch();
            while changes.changed().await.is_ok() {
                let ready = *changes.borrow_and_update();
                let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
                for name in &names {
                    health.set_service_status(name, status).await;
                }
            }
            // The readiness was dropped: what it said last stays.
            std::future::pending::<()>().await;
        };
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => served,
            () = following => serving.await,
        }
    }
}
/// The standard services' names, as reflection lists them.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Reflection over the contract and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Answer;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    #[tokio::test]
    async fn health_follows_readiness() {
        let listener = Listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let url = format!("http://{}", listener.local_addr());
        let readiness = Readiness::default();
        let shutdown = Shutdown::new();
        let router = proto::tonic::transport::Server::builder().add_routes(proto::tonic::service::Routes::default());
        let serving = tokio::spawn({
            let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
            async move { listener.serve(router, &["test.Service"], readiness, shutdown).await }
        });
        let status = |service: &'static str| {
            let url = url.clone();
            async move {
                let channel = proto::tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.ok()?;
                let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await.ok()?;
                Some(reply.into_inner().status())
            }
        };
        let until = |want: Answer| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while status("").await != Some(want) || status("test.Service").await != Some(want) {
                assert!(tokio::time::Instant::now() < deadline, "never {want:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        until(Answer::NotServing).await;
        readiness.set(true);
        until(Answer::Serving).await;
        readiness.set(false);
        until(Answer::NotServing).await;
        shutdown.cancel();
        serving.await.unwrap().unwrap();
    }
}
