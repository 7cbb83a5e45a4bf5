//! AuthorizationPolicy, end to end: a table of cases from Istio's documented semantics
//! (allow-nothing, deny-all, path wildcards, methods, principals, namespaces, headers,
//! audit), each checked by real requests between weft sidecars over mutual TLS.

mod common;

use std::path::Path;

use common::mesh::Mesh;

const B: u8 = 63;

fn mesh_yaml(policies: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server}}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}, {{number: 9000, name: tcp, protocol: TCP}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server-v1}}
spec: {{address: 127.{B}.1.1, serviceAccount: server, labels: {{app: server, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-v1}}
spec: {{address: 127.{B}.2.1, serviceAccount: client, labels: {{app: client, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: other-v1, namespace: other}}
spec: {{address: 127.{B}.3.1, serviceAccount: other, labels: {{app: other, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: server}}
spec:
  workloadSelector: {{labels: {{app: server}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:18631
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    defaultEndpoint: 127.0.0.1:18632
  egress: [{{hosts: ["./*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{B}.2.1
    hosts: ["*/*"]
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    bind: 127.{B}.2.1
    hosts: ["*/*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: other, namespace: other}}
spec:
  workloadSelector: {{labels: {{app: other}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{B}.3.1
    hosts: ["*/*"]
  - port: {{number: 9000, protocol: TCP, name: tcp}}
    bind: 127.{B}.3.1
    hosts: ["*/*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
{policies}
"#
    )
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n{spec}\n"
    )
}

/// A request from a caller's sidecar: (caller, port, method, path, extra header). Port
/// 9000 is TCP: the HTTP request crosses the sidecars as bytes, and a denial closes the
/// connection (status 0).
struct Call {
    from: &'static str,
    port: u16,
    method: &'static str,
    path: &'static str,
    header: Option<&'static str>,
    expect: u16,
}

fn call(from: &'static str, method: &'static str, path: &'static str, expect: u16) -> Call {
    Call { from, port: 9080, method, path, header: None, expect }
}

fn tcp(from: &'static str, expect: u16) -> Call {
    Call { from, port: 9000, method: "GET", path: "/", header: None, expect }
}

fn status(mesh: &Mesh, c: &Call) -> (u16, String) {
    let caller = if c.from == "client" { format!("127.{B}.2.1") } else { format!("127.{B}.3.1") };
    let url = format!("http://{caller}:{}{}", c.port, c.path);
    let mut args = vec!["-X", c.method, url.as_str(), "-H", "host: server.default.svc.cluster.local"];
    if let Some(h) = c.header {
        args.extend(["-H", h]);
    }
    let r = mesh.curl(&args);
    (r.status, r.body)
}

#[test]
fn authorization_policies_allow_and_deny_as_istio_documents() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let secure = format!("127.{B}.0.1:15012");
    let mut mesh = Mesh::start_with(
        B,
        &[("mesh.yaml", &mesh_yaml(""))],
        &["--secure-address", &secure, "--state-dir", &state_dir],
    );
    let token = |ns: &str, workload: &str| format!("{state_dir}/tokens/{ns}/{workload}.token");
    mesh.wait_until("the CA", || Path::new(&token("other", "other-v1")).exists());
    mesh.backend("server-app", "127.0.0.1", 18631, 0);
    mesh.backend("server-tcp-app", "127.0.0.1", 18632, 0);
    for (name, ns, workload, app, ip) in [
        ("server-sidecar", "default", "server-v1", "server", format!("127.{B}.1.1")),
        ("client-sidecar", "default", "client-v1", "client", format!("127.{B}.2.1")),
        ("other-sidecar", "other", "other-v1", "other", format!("127.{B}.3.1")),
    ] {
        mesh.weft_sidecar(name, ns, workload, app, &ip, &state_dir, workload, &[]);
    }

    let cases: Vec<(&str, String, Vec<Call>)> = vec![
        (
            "no policy: everything is allowed",
            String::new(),
            vec![call("client", "GET", "/a", 200), call("other", "POST", "/b", 200)],
        ),
        (
            "deny-all: a DENY rule that matches everything",
            policy("deny-all", "  action: DENY\n  rules: [{}]"),
            vec![call("client", "GET", "/a", 403)],
        ),
        (
            "AUDIT never blocks (and lifts the previous denial)",
            policy("audit", "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/*\"]}}]}]"),
            vec![call("client", "GET", "/a", 200), call("other", "GET", "/b", 200)],
        ),
        (
            "allow-nothing: an ALLOW policy without rules denies every request",
            policy("allow-nothing", "  action: ALLOW"),
            vec![call("client", "GET", "/a", 403), call("other", "GET", "/", 403)],
        ),
        (
            "CUSTOM without an external authorizer fails closed on what it matches",
            policy(
                "ext",
                "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{to: [{operation: {paths: [\"/ext/*\"]}}]}]",
            ),
            vec![call("client", "GET", "/ext/a", 403), call("client", "GET", "/b", 200)],
        ),
        (
            "ALLOW namespaces by prefix wildcard",
            policy("oth-star", "  rules: [{from: [{source: {namespaces: [\"oth*\"]}}]}]"),
            vec![call("other", "GET", "/", 200), call("client", "GET", "/", 403)],
        ),
        (
            "DENY a path prefix with a wildcard",
            policy("no-admin", "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]"),
            vec![
                call("client", "GET", "/admin/users", 403),
                // The path is normalized before authorization: an escape is no way around it.
                call("client", "GET", "/%61dmin/users", 403),
                call("client", "GET", "/public", 200),
                call("client", "GET", "/administrator", 200),
            ],
        ),
        (
            "ALLOW by suffix: any other path is denied once an ALLOW policy exists",
            policy("public-only", "  rules: [{to: [{operation: {paths: [\"*/public\"]}}]}]"),
            vec![call("client", "GET", "/a/public", 200), call("client", "GET", "/private", 403)],
        ),
        (
            "DENY a method except on one path (notPaths)",
            policy("no-post", "  action: DENY\n  rules: [{to: [{operation: {methods: [POST], notPaths: [/ok]}}]}]"),
            vec![
                call("client", "POST", "/x", 403),
                call("client", "POST", "/ok", 200),
                call("client", "GET", "/x", 200),
            ],
        ),
        (
            "ALLOW a principal (the caller's SPIFFE identity)",
            policy("only-client", "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]"),
            vec![call("client", "GET", "/", 200), call("other", "GET", "/", 403)],
        ),
        (
            "ALLOW a namespace",
            policy("only-other-ns", "  rules: [{from: [{source: {namespaces: [other]}}]}]"),
            vec![call("other", "GET", "/", 200), call("client", "GET", "/", 403)],
        ),
        (
            "DENY before ALLOW: a principal allowed, one of its paths denied",
            policy("client-allowed", "  rules: [{from: [{source: {principals: [\"*/sa/client\"]}}]}]")
                + &policy("but-not-secret", "  action: DENY\n  rules: [{to: [{operation: {paths: [/secret]}}]}]"),
            vec![
                call("client", "GET", "/", 200),
                call("client", "GET", "/secret", 403),
                call("other", "GET", "/", 403),
            ],
        ),
        (
            "ALLOW when a request header has a value",
            policy("token", "  rules: [{when: [{key: \"request.headers[x-token]\", values: [open-sesame]}]}]"),
            vec![
                Call {
                    from: "client",
                    port: 9080,
                    method: "GET",
                    path: "/",
                    header: Some("x-token: open-sesame"),
                    expect: 200,
                },
                Call {
                    from: "client",
                    port: 9080,
                    method: "GET",
                    path: "/",
                    header: Some("x-token: guess"),
                    expect: 403,
                },
                call("client", "GET", "/", 403),
            ],
        ),
        (
            "DENY by source namespace with notValues in a condition",
            policy(
                "only-default",
                "  action: DENY\n  rules: [{when: [{key: source.namespace, notValues: [default]}]}]",
            ),
            vec![call("client", "GET", "/", 200), call("other", "GET", "/", 403)],
        ),
        (
            "ALLOW a path template ({*} is one segment)",
            policy("template", "  rules: [{to: [{operation: {paths: [\"/api/{*}/items\"]}}]}]"),
            vec![call("client", "GET", "/api/7/items", 200), call("client", "GET", "/api/7/8/items", 403)],
        ),
        (
            "ALLOW the mesh's trust domain",
            policy("ours", "  rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]"),
            vec![call("client", "GET", "/", 200), call("other", "GET", "/", 200)],
        ),
        (
            "ALLOW only another trust domain",
            policy("theirs", "  rules: [{from: [{source: {trustDomains: [other.example]}}]}]"),
            vec![call("client", "GET", "/", 403), call("other", "GET", "/", 403)],
        ),
        (
            "AUDIT never blocks",
            policy("audit", "  action: AUDIT\n  rules: [{to: [{operation: {paths: [\"/*\"]}}]}]"),
            vec![call("client", "GET", "/a", 200), call("other", "GET", "/b", 200), tcp("client", 200)],
        ),
        (
            "TCP: DENY a port closes its connections and leaves the other port alone",
            policy("no-tcp", "  action: DENY\n  rules: [{to: [{operation: {ports: [\"9000\"]}}]}]"),
            vec![tcp("client", 0), tcp("other", 0), call("client", "GET", "/", 200)],
        ),
        (
            "TCP: ALLOW a principal over mutual TLS",
            policy("only-client", "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]"),
            vec![tcp("client", 200), tcp("other", 0)],
        ),
    ];
    for (name, policies, calls) in &cases {
        mesh.write_config("mesh.yaml", &mesh_yaml(policies));
        mesh.wait_until(name, || calls.iter().all(|c| status(&mesh, c).0 == c.expect));
        for c in calls {
            let (got, body) = status(&mesh, c);
            assert_eq!(got, c.expect, "{name}: {} {} from {}: {body}", c.method, c.path, c.from);
            if got == 403 {
                assert_eq!(body, "RBAC: access denied", "{name}");
            }
        }
    }
}
