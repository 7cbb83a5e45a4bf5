//! The TCP proxy: one upstream connection per downstream connection, bytes copied both
//! ways until either side closes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Shared;
use crate::listeners::PeerCertificate;
use crate::model::cluster::Discovery;
use crate::model::listener::TcpSpec;
use crate::telemetry::{Labels, Reporter, Service, Workload};
use crate::upstream::Outcome;
use crate::upstream::lb::hash_of;

/// Proxies one downstream connection.
pub async fn proxy<I>(
    shared: Arc<Shared>,
    spec: Arc<TcpSpec>,
    mut downstream: I,
    peer: SocketAddr,
    destination: SocketAddr,
    peer_certificate: Option<&PeerCertificate>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let stats = shared.stats.tcp(&spec.stat_prefix);
    stats.cx_total.fetch_add(1, Ordering::Relaxed);
    stats.cx_active.fetch_add(1, Ordering::Relaxed);
    let data = shared.data.load_full();
    let total: u64 = spec.clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut roll = fastrand::u64(..total.max(1));
    let cluster = spec
        .clusters
        .iter()
        .find(|(_, w)| {
            let hit = roll < u64::from(*w);
            roll = roll.saturating_sub(u64::from(*w));
            hit
        })
        .or(spec.clusters.last())
        .map(|(c, _)| c.as_str())
        .unwrap_or_default();
    let Some(upstream) = data.clusters.get(cluster).cloned() else {
        stats.no_route.fetch_add(1, Ordering::Relaxed);
        stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let labels = labels(&shared, &spec, &upstream.spec.service, peer_certificate);
    let finished = crate::telemetry::overrides::Finished {
        captured: None,
        source: peer,
        destination,
        cluster: Some(cluster),
        route: None,
    };
    let overrides = spec.metric_overrides.as_deref().map(|o| (o, &finished));
    shared.metrics.tcp_opened(&labels, overrides);
    let (mut sent, mut received) = (0, 0);
    let set = upstream.hosts_full();
    let attempt = async {
        let host = if upstream.spec.discovery == Discovery::OriginalDst {
            upstream.original_dst_host(destination)?
        } else {
            let index = upstream.pick(&set, Some(hash_of(peer.ip())), &[])?;
            set.hosts[index].clone()
        };
        let slot = upstream.slot().await.ok()?;
        let connector = host.client_connector();
        match connector.connect().await {
            Ok(conn) => Some((host, slot, conn)),
            Err(e) => {
                tracing::debug!(cluster, host = %host.address, "TCP upstream connect failed: {e}");
                upstream.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                upstream.record(&host, Outcome::ConnectFailure);
                None
            }
        }
    };
    if let Some((host, _slot, mut conn)) = attempt.await {
        host.active.fetch_add(1, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut down = Active { inner: &mut downstream, last: last.clone(), started };
        let mut up = Active { inner: &mut conn, last: last.clone(), started };
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        loop {
            // Envoy's TCP idle timeout: no bytes either way for this long closes both sides.
            let deadline =
                spec.idle_timeout.map(|idle| started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle);
            tokio::select! {
                copied = &mut copy => {
                    if let Ok((rx, tx)) = copied {
                        stats.rx_bytes.fetch_add(rx, Ordering::Relaxed);
                        stats.tx_bytes.fetch_add(tx, Ordering::Relaxed);
                        (sent, received) = (tx, rx);
                    }
                    break;
                }
                () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
                    if spec.idle_timeout.is_some_and(|idle| quiet_since + idle <= tokio::time::Instant::now()) {
                        tracing::debug!(cluster, "TCP connection idle; closing");
                        break;
                    }
                }
            }
        }
        host.active.fetch_sub(1, Ordering::Relaxed);
    }
    shared.metrics.tcp_closed(&labels, sent, received, overrides);
    stats.cx_active.fetch_sub(1, Ordering::Relaxed);
}

/// The labels of a TCP connection's metrics. No metadata crosses a TCP hop, so the
/// other side's workload is unknown; an inbound connection over mutual TLS knows the
/// caller's principal.
fn labels(shared: &Shared, spec: &TcpSpec, service: &Arc<Service>, peer: Option<&PeerCertificate>) -> Labels {
    let unknown = crate::telemetry::unknown_principal;
    let metrics = &shared.metrics;
    let (source, source_principal, destination, destination_principal, security) = match spec.reporter {
        Reporter::Destination => (
            Workload::unknown(),
            peer.and_then(|c| c.uri.clone()).unwrap_or_else(unknown),
            metrics.own().clone(),
            shared.identity.current().filter(|_| peer.is_some()).map_or_else(unknown, |w| w.principal.clone()),
            if peer.is_some() { "mutual_tls" } else { "none" },
        ),
        Reporter::Source => (metrics.own().clone(), unknown(), Workload::unknown(), unknown(), "unknown"),
    };
    Labels {
        reporter: spec.reporter,
        source,
        source_principal,
        destination,
        destination_principal,
        service: service.clone(),
        protocol: "tcp",
        code: 0,
        grpc_status: None,
        flags: crate::reply::Flags::default(),
        security,
    }
}

/// A stream that records when bytes last moved through it, in milliseconds since `started`.
struct Active<'a, T> {
    inner: &'a mut T,
    last: Arc<AtomicU64>,
    started: tokio::time::Instant,
}

impl<T> Active<'_, T> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
