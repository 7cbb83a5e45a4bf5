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
use crate::model::listener::{Chain, ChainKind, Hello, ListenerSpec};
use crate::model::rbac::Subject;
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

/// What a TLS ClientHello asks for (server name, ALPN), read without consuming it: the
/// bytes stay in the socket for whoever the connection goes to. A connection whose first
/// byte is not a TLS handshake record is plaintext.
async fn peek_hello(stream: &TcpStream) -> Hello {
    let deadline = tokio::time::Instant::now() + CLIENT_HELLO_TIMEOUT;
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await else {
            return Hello::default();
        };
        // 0x16: a TLS handshake record.
        if n == 0 || buf[0] != 0x16 {
            return Hello::default();
        }
        if n > seen {
            seen = n;
            let mut acceptor = rustls::server::Acceptor::default();
            let mut data = &buf[..n];
            while !data.is_empty() {
                if acceptor.read_tls(&mut data).is_err() {
                    return Hello::default();
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let hello = accepted.client_hello();
                    return Hello {
                        tls: true,
                        sni: hello.server_name().map(str::to_owned),
                        alpn: hello
                            .alpn()
                            .map(|protocols| protocols.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                            .unwrap_or_default(),
                    };
                }
                Ok(None) if n < buf.len() => {}
                _ => return Hello::default(),
            }
        }
        // The ClientHello is not complete yet: wait for more of it.
        if tokio::time::Instant::now() >= deadline {
            return Hello::default();
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
    let hello = if spec.needs_hello() { peek_hello(&stream).await } else { Hello::default() };
    let Some(chain) = spec.chain_for(destination.port(), &hello) else {
        tracing::debug!(listener = %spec.name, "no filter chain matches a connection to {destination}");
        return;
    };
    let Some(tls) = &chain.tls else {
        serve_chain(shared, chain, stream, None, hello.sni, peer, destination).await;
        return;
    };
    let config = tls.config_for(hello.alpn.iter().map(String::as_bytes));
    let accepted = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, tokio_rustls::TlsAcceptor::from(config).accept(stream));
    match accepted.await {
        Ok(Ok(stream)) => {
            let peer_cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(PeerCertificate::new);
            serve_chain(shared, chain, stream, Some(peer_cert), hello.sni, peer, destination).await;
        }
        Ok(Err(e)) => {
            shared.stats.ssl_handshake_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %spec.name, %peer, "TLS handshake failed: {e}");
        }
        Err(_) => {
            shared.stats.ssl_handshake_error.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = %spec.name, %peer, "TLS handshake timed out");
        }
    }
}

async fn serve_chain<I>(
    shared: Arc<Shared>,
    chain: &Chain,
    stream: I,
    tls: Option<Option<PeerCertificate>>,
    sni: Option<String>,
    peer: SocketAddr,
    destination: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer_certificate = tls.as_ref().and_then(|t| t.clone());
    if !chain.rbac.is_empty() {
        let subject = Subject {
            peer: Some(peer),
            destination: Some(destination),
            principal: peer_certificate.as_ref().and_then(|c| c.uri.as_deref()),
            sni: sni.as_deref(),
            http: None,
            metadata: None,
        };
        for filter in &chain.rbac {
            let (allowed, policy) = filter.allows(&subject);
            if !allowed {
                // Envoy's network RBAC: the connection is closed.
                shared.stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, ?policy, "connection denied by RBAC");
                return;
            }
        }
    }
    match &chain.kind {
        ChainKind::Http(h) => {
            let mut conn = http::Connection::new(shared.clone(), h.clone(), peer, destination);
            conn.tls = tls.is_some();
            conn.peer_certificate = peer_certificate;
            conn.sni = sni;
            http::serve(Arc::new(conn), stream).await;
        }
        ChainKind::Tcp(t) => {
            let certificate = peer_certificate.as_ref();
            crate::tcp::proxy(shared.clone(), t.clone(), stream, peer, destination, certificate).await;
        }
    }
}

/// A TLS client's certificate, as `x-forwarded-client-cert` and authorization see it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerCertificate {
    /// The first URI SAN (the SPIFFE id), if any.
    pub uri: Option<std::sync::Arc<str>>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub hash: String,
}

impl PeerCertificate {
    fn new(der: &rustls_pki_types::CertificateDer<'_>) -> PeerCertificate {
        PeerCertificate {
            uri: weft_tls::ca::spiffe_ids_der(der).into_iter().next().map(std::sync::Arc::from),
            hash: weft_tls::sha256_hex(der),
        }
    }

    /// Istio's principal: the SPIFFE id without `spiffe://`.
    pub fn principal(&self) -> Option<&str> {
        self.uri.as_deref().map(|u| u.strip_prefix("spiffe://").unwrap_or(u))
    }
}
