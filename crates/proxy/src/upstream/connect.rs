//! Connections to one upstream host: TCP with a connect timeout and TCP_NODELAY, then
//! TLS when the cluster originates it. Each live connection is counted.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::UpstreamTls;

/// Why a connection could not be made (the `UF` response flag).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish in time.
    #[error("connection timeout after {0:?}")]
    Timeout(Duration),
    /// The TCP connect failed (refused, unreachable).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
}

/// Connects to one host, whatever URI the pool asks for: the URI carries the request's
/// authority (HTTP/2's `:authority`), the connector knows the address.
#[derive(Debug, Clone)]
pub struct HostConnector {
    /// `ip:port` or `name:port`.
    pub target: Arc<str>,
    /// Host name for TLS server name fallback.
    pub host: Arc<str>,
    /// TCP connect timeout.
    pub timeout: Duration,
    /// TLS origination.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Open connections to this host.
    pub open: Arc<AtomicU64>,
    /// Connections ever made.
    pub total: Arc<AtomicU64>,
}

/// A connection to an upstream, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream, Guard),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Guard),
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct Guard(Arc<AtomicU64>, Uses);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many requests a connection has carried, handed to each of its responses (for
/// the cluster's `max_requests_per_connection`).
#[derive(Debug, Clone, Default)]
pub struct Uses(pub Arc<std::sync::atomic::AtomicU32>);

impl HostConnector {
    /// Opens a connection.
    pub async fn connect(&self) -> Result<Stream, ConnectError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&*self.target))
            .await
            .map_err(|_| ConnectError::Timeout(self.timeout))??;
        let _ = tcp.set_nodelay(true);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        let guard = Guard(self.open.clone(), Uses::default());
        match &self.tls {
            None => Ok(Stream::Plain(tcp, guard)),
            Some(tls) => {
                let name = tls
                    .server_name(&self.host)
                    .ok_or_else(|| ConnectError::Tls(format!("{} is not a valid server name", self.host)))?;
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ConnectError::Timeout(self.timeout))?
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Ok(Stream::Tls(Box::new(stream), guard))
            }
        }
    }
}

impl tower_service::Service<Uri> for HostConnector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        let (Stream::Plain(_, guard) | Stream::Tls(_, guard)) = self;
        let connected = Connected::new().extra(guard.1.clone());
        match self {
            Stream::Tls(s, _) if s.get_ref().1.alpn_protocol() == Some(b"h2") => connected.negotiated_h2(),
            _ => connected,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s, _) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }
}
