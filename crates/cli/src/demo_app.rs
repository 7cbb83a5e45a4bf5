//! `weft demo-app`: a small HTTP and gRPC application for examples and tests, in the
//! spirit of Istio's httpbin and echo apps. Every answer names the app and its version
//! and echoes the request (method, path, headers, the caller's identity as its sidecar
//! forwarded it); `/status/CODE`, `/delay/MS` (or `?status=CODE&delay=MS` on any path)
//! and `/headers` do what they say; with `--call`
//! it calls other services first (through its sidecar) and includes their answers,
//! forwarding Bookinfo's tracing and user headers, to build a call chain.
//!
//! On the same port it speaks gRPC: `weft.demo.v1.Echo/Echo` (see [`grpc`]) and the
//! standard health service `grpc.health.v1.Health`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// Headers an application must pass on for tracing and user routing to work across a
/// call chain (Bookinfo's list).
const PROPAGATED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "end-user",
    "user-agent",
];

#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The app's name, in every answer.
    #[arg(long, default_value = "demo")]
    name: String,
    /// The app's version, in every answer and the `x-version` header.
    #[arg(long, default_value = "v1")]
    app_version: String,
    /// A service to call on every request, `HOST=URL` (the URL of the sidecar's egress
    /// listener; HOST is the Host header): repeat for more.
    #[arg(long = "call", value_name = "HOST=URL")]
    calls: Vec<String>,
}

/// A response body of either protocol.
type AnyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

struct App {
    name: String,
    version: String,
    calls: Vec<(String, String)>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub fn run(args: DemoAppArgs) -> anyhow::Result<ExitCode> {
    let mut calls = Vec::new();
    for c in &args.calls {
        let (host, url) = c.split_once('=').ok_or_else(|| anyhow::anyhow!("--call {c:?}: expected HOST=URL"))?;
        calls.push((host.to_owned(), url.trim_end_matches('/').to_owned()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!("{} {} listening on {}", args.name, args.app_version, args.listen);
        let app = Arc::new(App {
            name: args.name,
            version: args.app_version,
            calls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let grpc = grpc::routes(&app.name, &app.version).await;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let app = app.clone();
                    let grpc = grpc.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let app = app.clone();
                            let mut grpc = grpc.clone();
                            async move {
                                if grpc::is_grpc(&req) {
                                    return Ok::<_, Infallible>(grpc::serve(&mut grpc, req, peer).await);
                                }
                                Ok(app.handle(req, peer).await.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

impl App {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::String(v.to_str().unwrap_or("").to_owned())))
            .collect();
        // `/status/CODE` and `/delay/MS`, or `?status=CODE&delay=MS` on any path.
        let query: Vec<(String, String)> =
            req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let mut status = StatusCode::OK;
        if let Some(code) = path.strip_prefix("/status/").or(param("status")) {
            status =
                code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
        }
        if let Some(ms) = path.strip_prefix("/delay/").or(param("delay")).and_then(|m| m.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        let body = if path == "/headers" {
            json!({ "headers": headers })
        } else {
            let mut downstream = Vec::new();
            for (host, url) in &self.calls {
                downstream.push(self.call(host, url, &req).await);
            }
            json!({
                "name": self.name,
                "version": self.version,
                "method": req.method().as_str(),
                "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
                "headers": headers,
                "peer": peer.to_string(),
                // The caller's identity, as the sidecar passes it (Istio's header).
                "caller": req.headers().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()),
                "calls": downstream,
            })
        };
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&self.version) {
            response.headers_mut().insert("x-version", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            response.headers_mut().insert("x-app", v);
        }
        response
    }

    /// Calls another service through the sidecar, passing on the propagated headers.
    async fn call(&self, host: &str, url: &str, incoming: &Request<Incoming>) -> Value {
        let mut request = Request::new(Full::new(Bytes::new()));
        let Ok(uri) = format!("{url}/").parse() else { return json!({"host": host, "error": "bad URL"}) };
        *request.uri_mut() = uri;
        if let Ok(h) = HeaderValue::from_str(host) {
            request.headers_mut().insert(HOST, h);
        }
        for name in PROPAGATED {
            if let Some(v) = incoming.headers().get(*name) {
                request.headers_mut().insert(*name, v.clone());
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let answer: Value =
                    serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
                json!({"host": host, "status": status, "answer": answer})
            }
            Ok(Err(e)) => json!({"host": host, "error": e.to_string()}),
            Err(_) => json!({"host": host, "error": "timed out"}),
        }
    }
}

pub mod grpc {
    //! The gRPC side: `weft.demo.v1.Echo/Echo` answers an `EchoRequest { string message = 1; }`
    //! with an `EchoResponse { string message = 1; string name = 2; string version = 3;
    //! map<string, string> metadata = 4; string caller = 5; string peer = 6; }`: the
    //! message, the app, the request metadata and the caller's identity as its sidecar
    //! forwarded it. Metadata `x-echo-status: CODE` makes it answer that gRPC status
    //! instead. `grpc.health.v1.Health` reports the echo service serving.

    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http_body_util::BodyExt;
    use hyper::Request;
    use hyper::body::Incoming;

    use super::AnyBody;

    /// `weft.demo.v1.EchoRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoRequest {
        /// Echoed back.
        #[prost(string, tag = "1")]
        pub message: String,
    }

    /// `weft.demo.v1.EchoResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponse {
        /// The request's message.
        #[prost(string, tag = "1")]
        pub message: String,
        /// The app's name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// The app's version.
        #[prost(string, tag = "3")]
        pub version: String,
        /// The request's metadata (its headers).
        #[prost(btree_map = "string, string", tag = "4")]
        pub metadata: BTreeMap<String, String>,
        /// `x-forwarded-client-cert`, the caller's identity as its sidecar forwarded it.
        #[prost(string, tag = "5")]
        pub caller: String,
        /// The connection's peer address.
        #[prost(string, tag = "6")]
        pub peer: String,
    }

    /// Whether a request is gRPC.
    pub fn is_grpc(req: &Request<Incoming>) -> bool {
        req.headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"))
    }

    /// The echo and health services.
    pub async fn routes(name: &str, version: &str) -> tonic::service::Routes {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<Echo>().await;
        let echo = Echo(Arc::new((name.to_owned(), version.to_owned())));
        tonic::service::Routes::new(echo).add_service(health)
    }

    /// Serves one gRPC request.
    pub async fn serve(
        routes: &mut tonic::service::Routes,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<AnyBody> {
        req.extensions_mut().insert(Peer(peer));
        let req = req.map(tonic::body::Body::new);
        let response = match tower_service::Service::call(routes, req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        response.map(|b| b.map_err(|s| Box::new(s) as Box<dyn std::error::Error + Send + Sync>).boxed_unsync())
    }

    #[derive(Clone, Copy)]
    struct Peer(SocketAddr);

    /// `weft.demo.v1.Echo`, named and version.
    #[derive(Clone)]
    struct Echo(Arc<(String, String)>);

    impl tonic::server::NamedService for Echo {
        const NAME: &'static str = "weft.demo.v1.Echo";
    }

    type Call = Pin<Box<dyn Future<Output = Result<hyper::Response<tonic::body::Body>, Infallible>> + Send>>;

    impl tower_service::Service<Request<tonic::body::Body>> for Echo {
        type Response = hyper::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Call;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<tonic::body::Body>) -> Call {
            let app = self.0.clone();
            if req.uri().path() != "/weft.demo.v1.Echo/Echo" {
                return Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) });
            }
            let peer = req.extensions().get::<Peer>().map(|p| p.0.to_string()).unwrap_or_default();
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<EchoResponse, EchoRequest>::default());
                Ok(grpc.unary(Unary { app, peer }, req).await)
            })
        }
    }

    struct Unary {
        app: Arc<(String, String)>,
        peer: String,
    }

    impl tonic::server::UnaryService<EchoRequest> for Unary {
        type Response = EchoResponse;
        type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<EchoResponse>, tonic::Status>> + Send>>;

        fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
            let (name, version) = (self.app.0.clone(), self.app.1.clone());
            let peer = self.peer.clone();
            Box::pin(async move {
                let metadata: BTreeMap<String, String> = request
                    .metadata()
                    .clone()
                    .into_headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                if let Some(code) = metadata.get("x-echo-status").and_then(|c| c.parse::<i32>().ok()) {
                    let code = tonic::Code::from_i32(code);
                    if code != tonic::Code::Ok {
                        return Err(tonic::Status::new(code, format!("{name} answered {code:?} as asked")));
                    }
                }
                let caller = metadata.get("x-forwarded-client-cert").cloned().unwrap_or_default();
                let message = request.into_inner().message;
                Ok(tonic::Response::new(EchoResponse { message, name, version, metadata, caller, peer }))
            })
        }
    }
}
