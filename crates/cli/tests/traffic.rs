//! Traffic through the mesh, twice: every scenario runs once through real Envoy
//! sidecars and gateways (the reference, and proof that weft's xDS is what Envoy
//! expects) and once through weft proxies fed the same xDS by the same control plane.
//! The assertions are the same, so the two data planes must behave alike: status codes,
//! which subset answered, headers added and removed, redirect targets, retries.

mod common;

use common::mesh::{Dataplane, Mesh};

/// Services, workloads and the client's sidecar, in local mode.
fn base(b: u8) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: details}}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: details}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.{b}.1.1, labels: {{app: reviews, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2}}
spec: {{address: 127.{b}.1.2, labels: {{app: reviews, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec: {{address: 127.{b}.1.3, labels: {{app: ratings, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: details-v1}}
spec: {{address: 127.{b}.1.4, labels: {{app: details, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{b}.2.1
    captureMode: NONE
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

fn reviews_split(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v2}}
      weight: {v2}
"#
    )
}

const POLICIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - retries: {attempts: 3, retryOn: "5xx,connect-failure", perTryTimeout: 2s, backoff: 10ms}
    route:
    - destination: {host: ratings}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: details.example.com}
  - match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /api/}
    route: [{destination: {host: details}}]
    headers:
      request:
        set: {x-routed-by: weft}
      response:
        add: {x-served-through: mesh}
  - match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-user]
      maxAge: 24h
    route: [{destination: {host: details}}]
  - route: [{destination: {host: details}}]
"#;

fn gateway(b: u8) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    bind: 127.{b}.3.1
    hosts: [bookshop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookshop}}
spec:
  hosts: [bookshop.example.com]
  gateways: [shop-gateway]
  http:
  - route:
    - destination: {{host: reviews, subset: v1, port: {{number: 9080}}}}
"#
    )
}

fn start_backends(mesh: &mut Mesh) {
    let b = mesh.block;
    mesh.backend("reviews-v1", &format!("127.{b}.1.1"), 9080, 0);
    mesh.backend("reviews-v2", &format!("127.{b}.1.2"), 9080, 0);
    mesh.backend("ratings-v1", &format!("127.{b}.1.3"), 9080, 4);
    mesh.backend("details-v1", &format!("127.{b}.1.4"), 9080, 0);
}

/// The client's sidecar, speaking delta xDS (the gateway speaks state of the world).
fn client_sidecar(mesh: &mut Mesh, kind: Dataplane) -> String {
    let b = mesh.block;
    let node = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    let admin = mesh.proxy(kind, "client", &node, &[("app", "client")], &format!("127.{b}.2.1"), true);
    let url = format!("http://127.{b}.2.1:9080/");
    mesh.wait_until("the client's egress listener", || mesh.curl(&["-H", "Host: details", &url]).status == 200);
    admin
}

fn routes_as_the_istio_yaml_says(kind: Dataplane, b: u8) {
    let mut mesh = Mesh::start(
        b,
        &[
            ("base.yaml", &base(b)),
            ("reviews.yaml", &reviews_split(80, 20)),
            ("policies.yaml", POLICIES),
            ("gateway.yaml", &gateway(b)),
        ],
    );
    start_backends(&mut mesh);
    let admin = client_sidecar(&mut mesh, kind);
    let egress = format!("http://127.{b}.2.1:9080");

    // Header routing to a subset.
    for _ in 0..20 {
        let r = mesh.curl(&["-H", "Host: reviews", "-H", "end-user: jason", &format!("{egress}/reviews")]);
        assert_eq!((r.status, r.backend()), (200, "reviews-v2"), "{r:?}");
    }

    // An 80/20 split, within tolerance.
    let n = 400;
    let v1 = (0..n)
        .filter(|_| {
            mesh.curl(&["-H", "Host: reviews.default.svc.cluster.local", &format!("{egress}/reviews")]).backend()
                == "reviews-v1"
        })
        .count();
    let share = v1 as f64 / n as f64;
    assert!((0.70..=0.90).contains(&share), "v1 got {share:.2} of requests, expected about 0.80");

    // Retries make a backend that fails three requests in four succeed: this needs the
    // VirtualService's 3 retries (Istio's default policy retries only twice).
    for _ in 0..10 {
        let r = mesh.curl(&["-H", "Host: ratings", &format!("{egress}/ratings")]);
        assert_eq!(r.status, 200, "{r:?}");
    }

    // Fault injection: a delay and an abort.
    let delayed = mesh.curl(&["-H", "Host: details", &format!("{egress}/delay")]);
    assert_eq!(delayed.status, 200);
    // Envoy's timers may fire a hair early; undelayed requests take milliseconds.
    assert!(delayed.seconds >= 0.9, "the delayed request took {}s", delayed.seconds);
    assert_eq!(mesh.curl(&["-H", "Host: details", &format!("{egress}/abort")]).status, 418);

    // A redirect and a rewrite with header changes.
    let moved = mesh.curl(&["-H", "Host: details", &format!("{egress}/old")]);
    assert_eq!((moved.status, moved.header("location")), (301, Some("http://details.example.com/new")), "{moved:?}");
    let rewritten = mesh.curl(&["-H", "Host: details", &format!("{egress}/v1/books?id=7")]);
    assert_eq!(rewritten.json()["path"], "/api/books?id=7", "{rewritten:?}");
    assert_eq!(rewritten.json()["headers"]["x-routed-by"], "weft");
    assert_eq!(rewritten.header("x-served-through"), Some("mesh"));

    // CORS: a preflight from an allowed origin is answered, another origin is not allowed.
    let preflight = |origin: &str| {
        mesh.curl(&[
            "-X",
            "OPTIONS",
            "-H",
            "Host: details",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: POST",
            &format!("{egress}/cors"),
        ])
    };
    let allowed = preflight("https://shop.example.com");
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://shop.example.com"), "{allowed:?}");
    assert_eq!(allowed.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(allowed.header("access-control-max-age"), Some("86400"));
    assert_eq!(preflight("https://elsewhere.example.com").header("access-control-allow-origin"), None);

    // An Envoy ingress gateway serving a Gateway + VirtualService.
    mesh.proxy(
        kind,
        "gateway",
        &format!("router~127.{b}.3.1~ingress.default~default.svc.cluster.local"),
        &[("istio", "ingressgateway")],
        &format!("127.{b}.3.2"),
        false,
    );
    let gw = format!("http://127.{b}.3.1:8080/");
    mesh.wait_until("the gateway listener", || mesh.curl(&["-H", "Host: bookshop.example.com", &gw]).status == 200);
    for _ in 0..10 {
        let r = mesh.curl(&["-H", "Host: bookshop.example.com", &gw]);
        assert_eq!((r.status, r.backend()), (200, "reviews-v1"));
    }
    assert_eq!(mesh.curl(&["-H", "Host: other.example.com", &gw]).status, 404);

    // Zero NACKs, and Envoy's own view of its versions is what weft recorded as ACKed.
    mesh.wait_synced(2);
    let dump: serde_json::Value =
        serde_json::from_str(&mesh.get(&format!("http://{admin}/config_dump")).body).unwrap_or_default();
    let sync = mesh.syncz();
    let client = sync
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["proxy"].as_str().is_some_and(|id| id.starts_with("sidecar~")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(client["protocol"], "delta");

    // The control plane's metrics count what happened.
    let metrics = mesh.get(&format!("http://127.{b}.0.1:15014/metrics")).body;
    let value = |name: &str| -> f64 {
        metrics.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    assert_eq!(value("pilot_xds "), 2.0, "{metrics}");
    assert!(value("pilot_xds_pushes_total{type=\"eds\"}") >= 2.0, "{metrics}");
    assert_eq!(value("pilot_total_xds_rejects_total"), 0.0, "{metrics}");
    assert!(value("pilot_proxy_convergence_time_count") >= 8.0, "{metrics}");

    // The same state through the commands users run.
    let debug = format!("127.{b}.0.1:15014");
    let status = common::run(&["proxy-status", "--control-plane", &debug]);
    let status = common::stdout(&status);
    let client_id = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    let row = status.lines().find(|l| l.starts_with(&client_id)).unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        row.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["SYNCED", "SYNCED", "SYNCED", "SYNCED", "delta", "default"],
        "{status}"
    );
    let routes = common::stdout(&common::run(&["proxy-config", "routes", &client_id, "--control-plane", &debug]));
    assert!(
        routes.lines().any(|l| l.contains("reviews.default.svc.cluster.local:9080")
            && l.contains("outbound|9080|v1|reviews.default.svc.cluster.local=80,outbound|9080|v2|reviews.default.svc.cluster.local=20")),
        "{routes}"
    );
    let clusters = common::stdout(&common::run(&["proxy-config", "clusters", &client_id, "--control-plane", &debug]));
    assert!(
        clusters.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["reviews.default.svc.cluster.local", "9080", "v2", "outbound", "EDS"]),
        "{clusters}"
    );
    // The control plane's dump of what it sends this proxy is in Envoy's shape and
    // names the very clusters the proxy's own dump holds.
    let cp_dump: serde_json::Value = serde_json::from_str(
        &mesh.get(&format!("http://127.{b}.0.1:15014/debug/config_dump?proxyID={client_id}")).body,
    )
    .unwrap_or_default();
    let cluster_names = |dump: &serde_json::Value| -> std::collections::BTreeSet<String> {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("ClustersConfigDump")))
            .flat_map(|c| c["dynamic_active_clusters"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let proxy_clusters = cluster_names(&dump);
    assert!(proxy_clusters.contains("outbound|9080|v2|reviews.default.svc.cluster.local"), "{proxy_clusters:?}");
    assert_eq!(cluster_names(&cp_dump), proxy_clusters);
    let acked = |t: &str| client["types"][t]["acked"].as_str().unwrap_or("").to_owned();
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    let envoy_version = |kind: &str, field: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
            .map(|c| c[field].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        envoy_version("ClustersConfigDump", "version_info"),
        acked("type.googleapis.com/envoy.config.cluster.v3.Cluster")
    );
    assert_eq!(
        envoy_version("ListenersConfigDump", "version_info"),
        acked("type.googleapis.com/envoy.config.listener.v3.Listener")
    );
}

fn live_edits_apply_without_restart_and_invalid_edits_keep_the_last_good_config(kind: Dataplane, b: u8) {
    let mut mesh = Mesh::start(b, &[("base.yaml", &base(b)), ("reviews.yaml", &reviews_split(100, 0))]);
    start_backends(&mut mesh);
    client_sidecar(&mut mesh, kind);
    let url = format!("http://127.{b}.2.1:9080/reviews");
    let backends = |mesh: &Mesh| {
        (0..20).map(|_| mesh.curl(&["-H", "Host: reviews", &url]).backend().to_owned()).collect::<Vec<_>>()
    };
    assert!(backends(&mesh).iter().all(|b| b == "reviews-v1"));

    mesh.write_config("reviews.yaml", &reviews_split(0, 100));
    mesh.wait_until("the edit to reach Envoy", || backends(&mesh).iter().all(|b| b == "reviews-v2"));

    // A broken edit is refused with the analyzer's diagnostic; v2 keeps being served.
    mesh.write_config("reviews.yaml", &reviews_split(0, 100).replace("subset: v2", "subset: v9"));
    mesh.wait_until("the refusal to be logged", || {
        mesh.log("control-plane").contains("Referenced host+subset in destinationrule not found")
    });
    assert!(backends(&mesh).iter().all(|b| b == "reviews-v2"));
    mesh.wait_synced(1);

    // Moving a workload changes endpoints only: EDS is pushed, CDS and LDS are not.
    let sent = |mesh: &Mesh, t: &str| {
        mesh.syncz()[0]["types"][format!("type.googleapis.com/envoy.config.{t}")]["sent"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let (cds, lds, eds) = (
        sent(&mesh, "cluster.v3.Cluster"),
        sent(&mesh, "listener.v3.Listener"),
        sent(&mesh, "endpoint.v3.ClusterLoadAssignment"),
    );
    mesh.write_config("reviews.yaml", &reviews_split(0, 100));
    mesh.backend("reviews-v2-moved", &format!("127.{b}.1.12"), 9080, 0);
    mesh.write_config(
        "base.yaml",
        &base(b).replace(&format!("address: 127.{b}.1.2,"), &format!("address: 127.{b}.1.12,")),
    );
    mesh.wait_until("the moved endpoint to serve", || backends(&mesh).iter().all(|b| b == "reviews-v2-moved"));
    assert_ne!(sent(&mesh, "endpoint.v3.ClusterLoadAssignment"), eds);
    assert_eq!((sent(&mesh, "cluster.v3.Cluster"), sent(&mesh, "listener.v3.Listener")), (cds, lds));
}

fn a_gateway_serves_gateway_api_httproutes(kind: Dataplane, b: u8) {
    let gateway_api = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  gatewayClassName: istio
  addresses: [{{type: IPAddress, value: 127.{b}.3.1}}]
  listeners:
  - {{name: http, port: 8081, protocol: HTTP, hostname: "*.example.com"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: books}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [books.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /reviews}}}}]
    backendRefs: [{{name: reviews, port: 9080}}]
  - matches: [{{path: {{type: PathPrefix, value: /details}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /api}}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-gateway, value: web}}]}}
    backendRefs: [{{name: details, port: 9080}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 302}}
"#
    );
    let mut mesh = Mesh::start(b, &[("base.yaml", &base(b)), ("gateway-api.yaml", &gateway_api)]);
    start_backends(&mut mesh);
    let node = format!("router~127.{b}.3.1~web.default~default.svc.cluster.local");
    mesh.proxy(
        kind,
        "web",
        &node,
        &[("gateway.networking.k8s.io/gateway-name", "web")],
        &format!("127.{b}.3.2"),
        false,
    );
    let url = |path: &str| format!("http://127.{b}.3.1:8081{path}");
    let host = "Host: books.example.com";
    mesh.wait_until("the Gateway's listener", || mesh.curl(&["-H", host, &url("/reviews")]).status == 200);

    let r = mesh.curl(&["-H", host, &url("/reviews/7")]);
    assert!(r.status == 200 && r.backend().starts_with("reviews-"), "{r:?}");
    assert_eq!(mesh.curl(&["-H", host, &url("/reviewsfoo")]).status, 404, "a path prefix matches whole segments");
    let d = mesh.curl(&["-H", host, &url("/details/9")]);
    assert_eq!((d.backend(), d.json()["path"].as_str()), ("details-v1", Some("/api/9")), "{d:?}");
    assert_eq!(d.json()["headers"]["x-gateway"], "web");
    let moved = mesh.curl(&["-H", host, &url("/old")]);
    assert_eq!((moved.status, moved.header("location")), (302, Some("http://books.example.com:8081/new")), "{moved:?}");
    assert_eq!(mesh.curl(&["-H", "Host: films.example.com", &url("/reviews")]).status, 404);
    mesh.wait_synced(1);
}

fn tcp_routes_split_connections_at_a_sidecar_and_a_gateway(kind: Dataplane, b: u8) {
    let tcp = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9100, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v1}}
spec: {{address: 127.{b}.1.1, labels: {{app: echo, version: v1}}, ports: {{tcp: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-v2}}
spec: {{address: 127.{b}.1.2, labels: {{app: echo, version: v2}}, ports: {{tcp: 9080}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: tcp-client}}
spec:
  workloadSelector: {{labels: {{app: tcp-client}}}}
  egress:
  - port: {{number: 9100, protocol: TCP, name: tcp}}
    bind: 127.{b}.2.1
    hosts: ["./echo.default.svc.cluster.local"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  tcp:
  - route:
    - {{destination: {{host: echo, subset: v1}}, weight: 25}}
    - {{destination: {{host: echo, subset: v2}}, weight: 75}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    bind: 127.{b}.3.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-gateway}}
spec:
  hosts: ["*"]
  gateways: [tcp-gateway]
  tcp:
  - match: [{{port: 31400}}]
    route: [{{destination: {{host: echo.default.svc.cluster.local, subset: v2, port: {{number: 9100}}}}}}]
"#
    );
    let mut mesh = Mesh::start(b, &[("base.yaml", &base(b)), ("tcp.yaml", &tcp)]);
    start_backends(&mut mesh);
    let node = format!("sidecar~127.{b}.2.1~tcp-client.default~default.svc.cluster.local");
    mesh.proxy(kind, "tcp-client", &node, &[("app", "tcp-client")], &format!("127.{b}.2.1"), false);
    let url = format!("http://127.{b}.2.1:9100/");
    mesh.wait_until("the TCP listener", || mesh.get(&url).status == 200);
    // HTTP/1.1 without keep-alive: each request is its own TCP connection.
    let n = 200;
    let v2 = (0..n).filter(|_| mesh.curl(&["-H", "Connection: close", &url]).backend() == "reviews-v2").count();
    let share = v2 as f64 / n as f64;
    assert!((0.62..=0.88).contains(&share), "v2 got {share:.2} of connections, expected about 0.75");

    mesh.proxy(
        kind,
        "gateway",
        &format!("router~127.{b}.3.1~ingress.default~default.svc.cluster.local"),
        &[("istio", "ingressgateway")],
        &format!("127.{b}.3.2"),
        false,
    );
    let gw = format!("http://127.{b}.3.1:31400/");
    mesh.wait_until("the gateway's TCP listener", || mesh.get(&gw).status == 200);
    for _ in 0..10 {
        assert_eq!(mesh.curl(&["-H", "Connection: close", &gw]).backend(), "reviews-v2");
    }
    mesh.wait_synced(2);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A key and a certificate for `cn` (with `extensions`, an openssl extension file's
/// text), signed by the CA [`certificates`] made in `dir`: the paths of
/// `<name>.pem` and `<name>.key`.
fn signed(dir: &std::path::Path, name: &str, cn: &str, extensions: &str) -> (String, String) {
    let (key, csr, pem, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let subject = format!("/CN={cn}");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subject]].concat());
    std::fs::write(dir.join(&ext), extensions).unwrap_or_else(|e| panic!("{e}"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    (path(&pem), path(&key))
}

/// A client certificate with common name `cn`, signed by the CA [`certificates`] made in
/// `dir`: (certificate, key).
fn client_certificate(dir: &std::path::Path, cn: &str) -> (String, String) {
    signed(dir, "client", cn, "")
}

/// A CA and a server certificate for `host`, made with the openssl command.
fn certificates(dir: &std::path::Path, host: &str) -> (String, String, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=test CA",
            "-days",
            "2",
        ],
    );
    let (cert, key) = signed(dir, "server", host, &format!("subjectAltName=DNS:{host}\n"));
    (dir.join("ca.pem").to_string_lossy().into_owned(), cert, key)
}

fn a_destination_rule_originates_tls_and_verifies_the_server(kind: Dataplane, b: u8) {
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (ca, cert, key) = certificates(certs.path(), "secure.example.com");
    let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (other_ca, _, _) = certificates(other.path(), "secure.example.com");
    let (client_cert, client_key) = client_certificate(certs.path(), "egress-client");
    let to = |server: u8, tls: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: 8443}}]
  endpoints: [{{address: 127.{b}.1.{server}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, {tls}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: egress-client}}
spec:
  workloadSelector: {{labels: {{app: egress-client}}}}
  egress:
  - port: {{number: 8080, protocol: HTTP, name: http}}
    bind: 127.{b}.2.1
    hosts: ["./secure.example.com"]
"#
        )
    };
    let external = |tls: &str| to(5, tls);
    let mut mesh = Mesh::start(
        b,
        &[("external.yaml", &external(&format!("caCertificates: {ca:?}, subjectAltNames: [secure.example.com]")))],
    );
    mesh.backend_with("secure", &format!("127.{b}.1.5"), 8443, 0, &["--tls-cert", &cert, "--tls-key", &key]);
    let node = format!("sidecar~127.{b}.2.1~egress-client.default~default.svc.cluster.local");
    mesh.proxy(kind, "egress-client", &node, &[("app", "egress-client")], &format!("127.{b}.2.1"), false);
    let url = format!("http://127.{b}.2.1:8080/orders");
    let host = "Host: secure.example.com";
    mesh.wait_until("TLS origination to work", || mesh.curl(&["-H", host, &url]).status == 200);
    let r = mesh.curl(&["-H", host, &url]);
    assert_eq!((r.backend(), r.json()["tls"].as_bool()), ("secure", Some(true)), "{r:?}");

    // A server whose certificate the configured CA did not sign is refused.
    let refused = |tls: String, what: &str| {
        mesh.write_config("external.yaml", &external(&tls));
        mesh.wait_until(what, || mesh.curl(&["-H", host, &url]).status == 503);
    };
    refused(
        format!("caCertificates: {other_ca:?}, subjectAltNames: [secure.example.com]"),
        "the wrong CA to be refused",
    );
    // So is one whose name is not an expected subject alt name.
    refused(format!("caCertificates: {ca:?}, subjectAltNames: [other.example.com]"), "the wrong name to be refused");
    // Without caCertificates the operating system's roots decide, and they do not know
    // the test's CA.
    refused("subjectAltNames: [secure.example.com]".into(), "a CA the system does not trust to be refused");
    // Without subjectAltNames the certificate must name the SNI.
    refused(format!("caCertificates: {ca:?}, sni: other.example.com"), "a certificate not for the SNI to be refused");
    mesh.write_config("external.yaml", &external(&format!("caCertificates: {ca:?}")));
    mesh.wait_until("the right CA and name to work again", || mesh.curl(&["-H", host, &url]).status == 200);

    // MUTUAL presents the given client certificate to a server that demands one; SIMPLE
    // has none to present.
    let ca_file = certs.path().join("ca.pem").to_string_lossy().into_owned();
    mesh.backend_with(
        "mutual",
        &format!("127.{b}.1.6"),
        8443,
        0,
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca_file],
    );
    mesh.write_config("external.yaml", &to(6, &format!("caCertificates: {ca:?}")));
    mesh.wait_until("SIMPLE to be refused by a server that wants a client certificate", || {
        mesh.curl(&["-H", host, &url]).status == 503
    });
    let mutual =
        format!("mode: MUTUAL, caCertificates: {ca:?}, clientCertificate: {client_cert:?}, privateKey: {client_key:?}");
    mesh.write_config("external.yaml", &to(6, &mutual).replace("mode: SIMPLE, ", ""));
    mesh.wait_until("MUTUAL to work", || mesh.curl(&["-H", host, &url]).status == 200);
    let r = mesh.curl(&["-H", host, &url]);
    assert_eq!((r.backend(), r.json()["client_cn"].as_str()), ("mutual", Some("egress-client")), "{r:?}");
    mesh.wait_synced(1);
}

fn tls_is_routed_by_sni_without_being_terminated(kind: Dataplane, b: u8) {
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (_, cert, key) = certificates(certs.path(), "secure.example.com");
    let external = |name: &str, last: u8| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.{b}.1.{last}}}]
---"#
        )
    };
    let yaml = format!(
        r#"{}{}
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tls-gateway}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8443, name: tls, protocol: TLS}}
    bind: 127.{b}.3.1
    hosts: [secure.example.com, other.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: by-sni}}
spec:
  hosts: [secure.example.com, other.example.com]
  gateways: [tls-gateway]
  tls:
  - match: [{{port: 8443, sniHosts: [secure.example.com]}}]
    route: [{{destination: {{host: secure.example.com, port: {{number: 8443}}}}}}]
  - match: [{{port: 8443, sniHosts: [other.example.com]}}]
    route: [{{destination: {{host: other.example.com, port: {{number: 8443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: tls-client}}
spec:
  workloadSelector: {{labels: {{app: tls-client}}}}
  egress:
  - port: {{number: 8443, protocol: TLS, name: tls}}
    bind: 127.{b}.2.1
    hosts: ["./*"]
"#,
        external("secure", 5),
        external("other", 6)
    );
    let mut mesh = Mesh::start(b, &[("tls.yaml", &yaml)]);
    for (name, last) in [("secure", 5), ("other", 6)] {
        mesh.backend_with(name, &format!("127.{b}.1.{last}"), 8443, 0, &["--tls-cert", &cert, "--tls-key", &key]);
    }
    let node = format!("router~127.{b}.3.1~ingress.default~default.svc.cluster.local");
    mesh.proxy(kind, "gateway", &node, &[("istio", "ingressgateway")], &format!("127.{b}.3.2"), false);
    let node = format!("sidecar~127.{b}.2.1~tls-client.default~default.svc.cluster.local");
    mesh.proxy(kind, "tls-client", &node, &[("app", "tls-client")], &format!("127.{b}.2.1"), true);
    // curl's TLS goes end to end: the proxies only read the SNI.
    let call = |host: &str, at: &str| {
        mesh.curl(&["-k", "--resolve", &format!("{host}:8443:{at}"), &format!("https://{host}:8443/hello")])
    };
    let gateway = format!("127.{b}.3.1");
    mesh.wait_until("the gateway's TLS listener", || call("secure.example.com", &gateway).status == 200);
    for (host, backend) in [("secure.example.com", "secure"), ("other.example.com", "other")] {
        let r = call(host, &gateway);
        assert_eq!((r.status, r.backend(), r.json()["tls"].as_bool()), (200, backend, Some(true)), "{r:?}");
    }
    assert_eq!(call("unknown.example.com", &gateway).status, 0, "an unknown name has no route");
    let sidecar = format!("127.{b}.2.1");
    mesh.wait_until("the sidecar's TLS listener", || call("other.example.com", &sidecar).status == 200);
    assert_eq!(call("secure.example.com", &sidecar).backend(), "secure");
    mesh.wait_synced(2);
}

#[test]
fn envoy_tls_is_routed_by_sni_without_being_terminated() {
    tls_is_routed_by_sni_without_being_terminated(Dataplane::Envoy, 39);
}

#[test]
fn weft_tls_is_routed_by_sni_without_being_terminated() {
    tls_is_routed_by_sni_without_being_terminated(Dataplane::Weft, 139);
}

#[test]
fn envoy_routes_as_the_istio_yaml_says() {
    routes_as_the_istio_yaml_says(Dataplane::Envoy, 41);
}

#[test]
fn weft_routes_as_the_istio_yaml_says() {
    routes_as_the_istio_yaml_says(Dataplane::Weft, 141);
}

#[test]
fn envoy_live_edits_apply_without_restart_and_invalid_edits_keep_the_last_good_config() {
    live_edits_apply_without_restart_and_invalid_edits_keep_the_last_good_config(Dataplane::Envoy, 42);
}

#[test]
fn weft_live_edits_apply_without_restart_and_invalid_edits_keep_the_last_good_config() {
    live_edits_apply_without_restart_and_invalid_edits_keep_the_last_good_config(Dataplane::Weft, 142);
}

#[test]
fn envoy_a_gateway_serves_gateway_api_httproutes() {
    a_gateway_serves_gateway_api_httproutes(Dataplane::Envoy, 43);
}

#[test]
fn weft_a_gateway_serves_gateway_api_httproutes() {
    a_gateway_serves_gateway_api_httproutes(Dataplane::Weft, 143);
}

#[test]
fn envoy_tcp_routes_split_connections_at_a_sidecar_and_a_gateway() {
    tcp_routes_split_connections_at_a_sidecar_and_a_gateway(Dataplane::Envoy, 44);
}

#[test]
fn weft_tcp_routes_split_connections_at_a_sidecar_and_a_gateway() {
    tcp_routes_split_connections_at_a_sidecar_and_a_gateway(Dataplane::Weft, 144);
}

#[test]
fn envoy_a_destination_rule_originates_tls_and_verifies_the_server() {
    a_destination_rule_originates_tls_and_verifies_the_server(Dataplane::Envoy, 45);
}

#[test]
fn weft_a_destination_rule_originates_tls_and_verifies_the_server() {
    a_destination_rule_originates_tls_and_verifies_the_server(Dataplane::Weft, 145);
}
