//! Connections to the services: plaintext for `http://` addresses, TLS for `https://` ones (trusting
//! `--ca-cert`, or the system's roots without it, and presenting a client certificate for mutual
//! TLS), and the API token every call to the collector carries.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use proto::tonic::metadata::{Ascii, MetadataValue};
use proto::tonic::service::Interceptor;
use proto::tonic::service::interceptor::InterceptedService;
use proto::tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use proto::tonic::{Request, Status};
use proto::v1::analyzer_service_client::AnalyzerServiceClient;
use proto::v1::ingest_service_client::IngestServiceClient;
use proto::v1::query_service_client::QueryServiceClient;

/// How to reach the services securely; global flags of every command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Access {
    /// API token for the collector, sent as `authorization: Bearer <token>` (its `auth.tokens`).
    #[arg(long, env = "RUNNEL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed the services' certificates, for `https://` addresses; without it
    /// the system's roots are trusted.
    #[arg(long, env = "RUNNEL_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a service that requires mutual TLS (with `--client-key`).
    #[arg(long, env = "RUNNEL_CLIENT_CERT", global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "RUNNEL_CLIENT_KEY", global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
}

/// A service's address and how to reach it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Service<'a> {
    /// What the service is, for messages: "collector", "store", "analyzer".
    pub(crate) name: &'static str,
    pub(crate) url: &'a str,
    pub(crate) access: &'a Access,
}

/// Carries the token on every call.
#[derive(Debug, Clone)]
pub(crate) struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authorized = InterceptedService<Channel, Token>;

impl Service<'_> {
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Endpoint::from_shared(self.url.to_owned()).with_context(|| format!("{:?} is not the {}'s address", self.url, self.name))?;
        if self.url.starts_with("https://") {
            let a = self.access;
            let mut tls = match &a.ca_cert {
                Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&a.client_cert, &a.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert, "--client-cert")?, read(key, "--client-key")?));
            }
            endpoint = endpoint.tls_config(tls).context("the TLS settings")?;
        }
        endpoint.connect().await.with_context(|| format!("connecting to the {} at {}", self.name, self.url))
    }

    fn token(&self) -> anyhow::Result<Token> {
        let value = self.access.token.as_deref().map(|t| format!("Bearer {t}").parse()).transpose().context("--token has characters a header cannot carry")?;
        Ok(Token(value))
    }

    pub(crate) async fn collector(&self) -> anyhow::Result<IngestServiceClient<Authorized>> {
        Ok(IngestServiceClient::with_interceptor(self.channel().await?, self.token()?))
    }

    /// The store and the analyzer take no token (they are reached from inside the deployment).
    pub(crate) async fn store(&self) -> anyhow::Result<QueryServiceClient<Channel>> {
        Ok(QueryServiceClient::new(self.channel().await?))
    }

    pub(crate) async fn analyzer(&self) -> anyhow::Result<AnalyzerServiceClient<Channel>> {
        Ok(AnalyzerServiceClient::new(self.channel().await?))
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}
