//! gRPC serving: bind first (port 0 allowed, the bound address is known before serving), then serve a
//! tonic router until shutdown, letting in-flight calls finish.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::Shutdown;

/// A bound, not yet serving, gRPC listener.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr`; with port 0 the OS picks a free port, see [`Listener::local_addr`].
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `shutdown` is cancelled, then stops accepting and waits for in-flight calls.
    pub async fn serve(
        self,
        router: proto::tonic::transport::server::Router,
        shutdown: Shutdown,
    ) -> Result<(), proto::tonic::transport::Error> {
        tracing::info!(addr = %self.addr, "grpc serving");
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown.cancelled_owned())
            .await
    }
}
