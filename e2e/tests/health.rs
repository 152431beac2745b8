//! Every gRPC server answers the gRPC health checking protocol and server reflection, so that load
//! balancers, orchestrators and `grpcurl` work with no `.proto` files: the collector, the store and the
//! analyzer each report SERVING for the server and for their own services, NOT_FOUND for a service
//! they do not have, and list and describe their services over reflection v1 and v1alpha. The
//! collector's HTTP liveness and readiness answer too.

// Tests report failure by panicking, and build settings by assigning to defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::field_reassign_with_default)]

use std::net::SocketAddr;

use e2e::Running;
use e2e::oracle::Topics;
use proto::tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1 as reflection;
use tonic_reflection::pb::v1alpha as reflection_alpha;

async fn channel(addr: SocketAddr) -> proto::tonic::transport::Channel {
    proto::tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn status(addr: SocketAddr, service: &str) -> Result<ServingStatus, Code> {
    let mut client = HealthClient::new(channel(addr).await);
    match client.check(HealthCheckRequest { service: service.to_owned() }).await {
        Ok(reply) => Ok(reply.into_inner().status()),
        Err(status) => Err(status.code()),
    }
}

/// The services reflection v1 lists, sorted, and whether it describes `symbol` (as `grpcurl describe`
/// asks: the file that defines it).
async fn reflected(addr: SocketAddr, symbol: &str) -> (Vec<String>, bool) {
    use reflection::server_reflection_client::ServerReflectionClient;
    use reflection::server_reflection_request::MessageRequest;
    use reflection::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let ask = |message| reflection::ServerReflectionRequest { host: String::new(), message_request: Some(message) };
    let requests = vec![ask(MessageRequest::ListServices(String::new())), ask(MessageRequest::FileContainingSymbol(symbol.to_owned()))];
    let mut replies = client.server_reflection_info(futures::stream::iter(requests)).await.unwrap().into_inner();
    let (mut services, mut described) = (Vec::new(), false);
    while let Some(reply) = replies.message().await.unwrap() {
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => services = list.service.into_iter().map(|s| s.name).collect(),
            Some(MessageResponse::FileDescriptorResponse(files)) => described = !files.file_descriptor_proto.is_empty(),
            other => panic!("an unexpected reflection answer: {other:?}"),
        }
    }
    services.sort();
    (services, described)
}

/// The services reflection v1alpha lists (what older `grpcurl` versions ask), sorted.
async fn reflected_alpha(addr: SocketAddr) -> Vec<String> {
    use reflection_alpha::server_reflection_client::ServerReflectionClient;
    use reflection_alpha::server_reflection_request::MessageRequest;
    use reflection_alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = reflection_alpha::ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut replies = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.message().await.unwrap().unwrap().message_response else {
        panic!("not a list of services");
    };
    let mut services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_server_answers_health_checks_and_reflection() {
    let topics = Topics::unique(1);
    let mut settings = collector::Settings::default();
    settings.kafka = e2e::kafka();
    settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
    settings.ops.listen = "127.0.0.1:0".parse().unwrap();
    settings.http.listen = "127.0.0.1:0".parse().unwrap();
    settings.topics.points = topics.points.clone();
    let app = collector::App::build(settings).await.unwrap();
    let (collector, collector_http) = (app.grpc_addr(), app.http_addr());
    let collector_running = Running::spawn(|shutdown| app.run(shutdown));
    let dir = std::env::temp_dir().join(e2e::unique("runnel-health"));
    let (store, _, store_running) = e2e::services::start_store(&topics, &e2e::unique("health-store"), &dir).await;
    let (mut settings, rules) = e2e::analyzer_settings("");
    settings.topics.aggregates = topics.aggregates.clone();
    settings.topics.alerts = topics.alerts.clone();
    let app = analyzer::App::build(settings).await.unwrap();
    let analyzer = app.grpc_addr();
    let analyzer_running = Running::spawn(|shutdown| app.run(shutdown));

    let health = "grpc.health.v1.Health";
    let standard = [health, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
    for (addr, own) in [
        (collector, vec!["runnel.v1.IngestService", "opentelemetry.proto.collector.metrics.v1.MetricsService"]),
        (store, vec!["runnel.v1.QueryService"]),
        (analyzer, vec!["runnel.v1.AnalyzerService"]),
    ] {
        // Serving starts once `run` has begun: poll for it.
        let serving = e2e::eventually("the server reports serving", std::time::Duration::from_secs(30), || async {
            (status(addr, "").await == Ok(ServingStatus::Serving)).then_some(())
        });
        serving.await;
        for service in &own {
            assert_eq!(status(addr, service).await, Ok(ServingStatus::Serving), "{service} at {addr}");
        }
        assert_eq!(status(addr, "runnel.v1.NoSuchService").await, Err(Code::NotFound));

        let mut listed: Vec<String> = own.iter().chain(&standard).map(|s| (*s).to_owned()).collect();
        listed.sort();
        let (services, described) = reflected(addr, own[0]).await;
        assert_eq!(services, listed, "reflection v1 at {addr}");
        // OTLP's descriptors are not compiled in; Runnel's own services are described.
        assert!(described, "{} is described", own[0]);
        assert_eq!(reflected_alpha(addr).await, listed, "reflection v1alpha at {addr}");
    }

    // The collector's HTTP liveness and readiness (InfluxDB's `/health` answers as readiness does).
    let http = |path: &'static str| async move {
        let reply = reqwest::get(format!("http://{}{path}", collector_http)).await.unwrap();
        (reply.status().as_u16(), reply.text().await.unwrap())
    };
    for path in ["/livez", "/readyz", "/health"] {
        assert_eq!(http(path).await, (200, r#"{"status":"pass"}"#.to_owned()), "{path}");
    }

    collector_running.stop().await;
    store_running.stop().await;
    analyzer_running.stop().await;
    std::fs::remove_file(rules).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
