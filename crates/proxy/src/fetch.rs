//! A small HTTP(S) GET for the proxy's own needs (remote JWKS): one request on a fresh
//! connection, with a timeout and a size limit. HTTPS servers are verified against the
//! system's trust store.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The largest body accepted.
const MAX_BODY: usize = 1 << 20;

/// Fetches `uri` (http or https); the body, or why not.
pub async fn get(uri: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, get_inner(uri)).await.map_err(|_| format!("{uri}: timed out after {timeout:?}"))?
}

async fn get_inner(uri: &str) -> Result<Vec<u8>, String> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
    let host = parsed.host().ok_or_else(|| format!("{uri}: no host"))?.trim_matches(['[', ']']).to_owned();
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{uri}: only http and https are supported")),
    };
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{uri}: {e}"))?;
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = parsed.authority().map_or(host.clone(), |a| a.as_str().to_owned());
    if https {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(crate::secrets::system_roots().iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(weft_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("{uri}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{uri}: {e}"))?;
        request(tls, &authority, &path, uri).await
    } else {
        request(tcp, &authority, &path, uri).await
    }
}

async fn request<S>(stream: S, authority: &str, path: &str, uri: &str) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let fail = |e: &dyn std::fmt::Display| format!("{uri}: {e}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let req =
        Request::get(path).header(hyper::header::HOST, authority).body(Empty::<Bytes>::new()).map_err(|e| fail(&e))?;
    let response = sender.send_request(req).await.map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(format!("{uri}: HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY).collect().await.map_err(|e| fail(&e))?;
    Ok(body.to_bytes().to_vec())
}
