//! The listener manager: binds a socket per listener, accepts connections and hands
//! each to its filter chain. A listener whose configuration changes keeps its socket;
//! new connections use the new configuration, open ones finish on the old.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::Shared;
use crate::http;
use crate::model::listener::{ChainKind, ListenerSpec};
use crate::state::DataPlane;

/// Connections waiting to be accepted, per listener.
const BACKLOG: i32 = 1024;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind listener {name} to {address}: {source} (is another process using this address?)")]
pub struct BindError {
    /// The listener.
    pub name: String,
    /// The address.
    pub address: SocketAddr,
    /// The socket error.
    pub source: std::io::Error,
}

struct Running {
    address: SocketAddr,
    current: Arc<ArcSwap<ListenerSpec>>,
    task: JoinHandle<()>,
}

/// The running listeners.
#[derive(Default)]
pub struct ListenerManager {
    running: HashMap<String, Running>,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerManager").field("listeners", &self.running.keys().collect::<Vec<_>>()).finish()
    }
}

impl ListenerManager {
    /// Makes the running listeners those of `data`.
    pub fn reconcile(&mut self, shared: &Arc<Shared>, data: &DataPlane) -> Vec<BindError> {
        self.running.retain(|name, r| match data.listeners.get(name) {
            Some(spec) if spec.address == r.address && spec.bind_to_port => true,
            _ => {
                r.task.abort();
                false
            }
        });
        let mut errors = Vec::new();
        for (name, spec) in &data.listeners {
            if !spec.bind_to_port {
                // Reached only through a capture listener's hand-off.
                continue;
            }
            if let Some(r) = self.running.get(name) {
                if !Arc::ptr_eq(&r.current.load(), spec) {
                    r.current.store(spec.clone());
                }
                continue;
            }
            match bind(spec.address) {
                Ok(listener) => {
                    let current = Arc::new(ArcSwap::from(spec.clone()));
                    let task = tokio::spawn(accept_loop(shared.clone(), listener, current.clone()));
                    tracing::info!(listener = %name, address = %spec.address, "listening");
                    self.running.insert(name.clone(), Running { address: spec.address, current, task });
                }
                Err(source) => {
                    shared.stats.listener_create_failure.fetch_add(1, Ordering::Relaxed);
                    errors.push(BindError { name: name.clone(), address: spec.address, source });
                }
            }
        }
        errors
    }

    /// Closes every listening socket (open connections go on).
    pub fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.task.abort();
        }
    }

    /// Names and addresses of the running listeners.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<_> = self.running.iter().map(|(n, r)| (n.clone(), r.address)).collect();
        out.sort();
        out
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, current: Arc<ArcSwap<ListenerSpec>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let spec = current.load_full();
        tokio::spawn(serve_connection(shared.clone(), spec, stream, peer));
    }
}

/// The destination a captured connection was headed for (iptables REDIRECT).
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let addr = sock.original_dst_v4().or_else(|_| sock.original_dst_v6()).ok()?;
    addr.as_socket()
}

/// Longest TLS ClientHello weft waits for.
const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// How long a client may take to send its ClientHello.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The SNI of a TLS ClientHello, read without consuming it: the bytes stay in the socket
/// for whoever the connection goes to. None when the client does not speak TLS first.
async fn peek_sni(stream: &TcpStream) -> Option<String> {
    let deadline = tokio::time::Instant::now() + CLIENT_HELLO_TIMEOUT;
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if n > seen {
            seen = n;
            let mut acceptor = rustls::server::Acceptor::default();
            let mut data = &buf[..n];
            while !data.is_empty() {
                if acceptor.read_tls(&mut data).is_err() {
                    return None;
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return accepted.client_hello().server_name().map(str::to_owned),
                Ok(None) if n < buf.len() => {}
                _ => return None,
            }
        }
        // The ClientHello is not complete yet: wait for more of it.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn serve_connection(shared: Arc<Shared>, spec: Arc<ListenerSpec>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else { return };
    let mut spec = spec;
    let mut destination = local;
    if (spec.use_original_dst || spec.original_dst_filter)
        && let Some(original) = original_destination(&stream)
    {
        destination = original;
    }
    if spec.use_original_dst && destination != local {
        let original = destination;
        // Hand the connection to the listener for its original destination, if any.
        let data = shared.data.load();
        let exact = data.listeners.values().find(|l| l.address == original);
        let any =
            data.listeners.values().find(|l| l.address.ip().is_unspecified() && l.address.port() == original.port());
        if let Some(target) = exact.or(any) {
            spec = target.clone();
        }
    }
    let needs_sni = spec.chains.iter().any(|c| !c.server_names.is_empty());
    let sni = if needs_sni { peek_sni(&stream).await } else { None };
    let Some(chain) = spec.chain_for(destination.port(), sni.as_deref()) else {
        tracing::debug!(listener = %spec.name, "no filter chain matches a connection to {destination}");
        return;
    };
    match &chain.kind {
        ChainKind::Http(h) => {
            let conn = Arc::new(http::Connection::new(shared.clone(), h.clone(), peer, destination));
            http::serve(conn, stream).await;
        }
        ChainKind::Tcp(t) => crate::tcp::proxy(shared.clone(), t.clone(), stream, peer, destination).await,
    }
}
