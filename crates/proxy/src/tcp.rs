//! The TCP proxy: one upstream connection per downstream connection, bytes copied both
//! ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shared;
use crate::model::cluster::Discovery;
use crate::model::listener::TcpSpec;
use crate::upstream::Outcome;
use crate::upstream::lb::hash_of;

/// Proxies one downstream connection.
pub async fn proxy<I>(
    shared: Arc<Shared>,
    spec: Arc<TcpSpec>,
    mut downstream: I,
    peer: SocketAddr,
    destination: SocketAddr,
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
        let copied = tokio::io::copy_bidirectional(&mut downstream, &mut conn).await;
        if let Ok((up, down)) = copied {
            stats.rx_bytes.fetch_add(up, Ordering::Relaxed);
            stats.tx_bytes.fetch_add(down, Ordering::Relaxed);
        }
        host.active.fetch_sub(1, Ordering::Relaxed);
    }
    stats.cx_active.fetch_sub(1, Ordering::Relaxed);
}
