//! RequestAuthentication end to end: tokens signed in the test, validated by a weft
//! sidecar (valid, expired, wrong issuer, wrong audience, bad signature, none), claims
//! passed to the application and used by AuthorizationPolicy (requestPrincipals, claims).

mod common;

use base64::Engine;
use common::mesh::Mesh;

const B: u8 = 64;
const ISSUER: &str = "https://issuer.weft.test";

/// A P-256 signing key and its JWKS.
struct Signer {
    key: rcgen::KeyPair,
    kid: String,
}

impl Signer {
    fn new(kid: &str) -> Signer {
        Signer { key: rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}")), kid: kid.into() }
    }

    fn jwks(&self) -> String {
        let raw = self.key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..65]));
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"{}","x":"{x}","y":"{y}"}}]}}"#,
            self.kid
        )
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, &claims, &key).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn claims(sub: &str, iss: &str, aud: &str, exp: u64, groups: &[&str]) -> serde_json::Value {
    serde_json::json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "groups": groups})
}

fn mesh_yaml(b: u8, keys: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server}}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server-v1}}
spec: {{address: 127.{b}.1.1, labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: server}}
spec:
  workloadSelector: {{labels: {{app: server}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:18{b}1
  egress: [{{hosts: ["./*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: issuer}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [weft]
    {keys}
    outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]
{policy}
"#
    )
}

fn call(mesh: &Mesh, token: Option<&str>) -> (u16, String) {
    call_in(mesh, B, token)
}

fn call_in(mesh: &Mesh, b: u8, token: Option<&str>) -> (u16, String) {
    let auth;
    let mut args = vec![format!("http://127.{b}.1.1:9080/")];
    if let Some(t) = token {
        auth = format!("Authorization: Bearer {t}");
        args.extend(["-H".to_owned(), auth]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = mesh.curl(&args);
    (r.status, r.body)
}

#[test]
fn tokens_are_validated_and_their_claims_authorize() {
    let signer = Signer::new("k1");
    let jwks = signer.jwks();
    let mut mesh = Mesh::start(B, &[("mesh.yaml", &mesh_yaml(B, &format!("jwks: '{jwks}'"), ""))]);
    mesh.backend("server-app", "127.0.0.1", 18641, 0);
    let node = format!("sidecar~127.{B}.1.1~server-v1.default~default.svc.cluster.local");
    mesh.weft_proxy("server-sidecar", &node, "default", &[("app", "server")], &format!("127.{B}.1.1"), "delta");

    let hour = 3600;
    let alice = signer.token(claims("alice", ISSUER, "weft", now() + hour, &["admins", "dev"]));
    let bob = signer.token(claims("bob", ISSUER, "weft", now() + hour, &["dev"]));
    let expired = signer.token(claims("alice", ISSUER, "weft", now() - hour, &[]));
    let stranger = signer.token(claims("alice", "https://elsewhere.test", "weft", now() + hour, &[]));
    let other_audience = signer.token(claims("alice", ISSUER, "another-app", now() + hour, &[]));
    let forged = Signer::new("k1").token(claims("alice", ISSUER, "weft", now() + hour, &[]));

    // A valid token passes; its claim reaches the application, the token itself does not.
    let (status, body) = call(&mesh, Some(&alice));
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(echo["headers"]["x-jwt-sub"], "alice", "{echo}");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    // Without a token: allowed (no policy requires one).
    assert_eq!(call(&mesh, None).0, 200);
    // A client cannot forge what the filter writes: x-jwt-sub comes from a token or not at all.
    let forged_header = mesh.curl(&[&format!("http://127.{B}.1.1:9080/"), "-H", "x-jwt-sub: admin"]);
    assert_eq!(forged_header.status, 200, "{}", forged_header.body);
    let echo: serde_json::Value = serde_json::from_str(&forged_header.body).unwrap_or_default();
    assert_eq!(echo["name"], "server-app", "{echo}");
    assert!(echo["headers"].get("x-jwt-sub").is_none(), "{echo}");
    // Every bad token is refused with 401 and Envoy's reason.
    for (what, token, reason) in [
        ("expired", &expired, "Jwt is expired"),
        ("another issuer", &stranger, "Jwt issuer is not configured"),
        ("another audience", &other_audience, "Audiences in Jwt are not allowed"),
        ("a bad signature", &forged, "Jwt verification fails"),
        ("not a JWT", &"not-a-jwt".to_owned(), "Jwt is not in the form of Header.Payload.Signature"),
    ] {
        assert_eq!(call(&mesh, Some(token)), (401, reason.to_owned()), "{what}");
    }

    // requestPrincipals: only alice's tokens, and a request without one is refused.
    let only_alice = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: alice}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  rules: [{{from: [{{source: {{requestPrincipals: [\"{ISSUER}/alice\"]}}}}]}}]\n"
    );
    mesh.write_config("mesh.yaml", &mesh_yaml(B, &format!("jwks: '{jwks}'"), &only_alice));
    mesh.wait_until("the requestPrincipals policy", || call(&mesh, None).0 == 403);
    assert_eq!(call(&mesh, Some(&alice)).0, 200);
    assert_eq!(call(&mesh, Some(&bob)), (403, "RBAC: access denied".to_owned()));

    // A claim condition: members of admins only (carol is one, and not alice).
    let admins = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admins}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules: [{when: [{key: \"request.auth.claims[groups]\", values: [admins]}]}]\n";
    mesh.write_config("mesh.yaml", &mesh_yaml(B, &format!("jwks: '{jwks}'"), admins));
    let carol = signer.token(claims("carol", ISSUER, "weft", now() + 3600, &["admins"]));
    mesh.wait_until("the claims policy", || call(&mesh, Some(&carol)).0 == 200);
    assert_eq!(call(&mesh, Some(&bob)).0, 403);
    assert_eq!(call(&mesh, Some(&alice)).0, 200);
    assert_eq!(call(&mesh, None).0, 403);
}

/// The common ingress pattern: the gateway itself requires a valid token (its own
/// RequestAuthentication and AuthorizationPolicy, selected by its labels).
#[test]
fn an_ingress_gateway_requires_a_token() {
    const G: u8 = 65;
    let signer = Signer::new("gw");
    let jwks = signer.jwks();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ["*"], bind: 127.{G}.9.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server}}
spec:
  hosts: ["*"]
  gateways: [istio-system/ingress]
  http: [{{route: [{{destination: {{host: server.default.svc.cluster.local, port: {{number: 9080}}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server}}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: 18651}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules: [{{issuer: {ISSUER}, jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-requires-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules: [{{from: [{{source: {{requestPrincipals: ["*"]}}}}]}}]
"#
    );
    let mut mesh = Mesh::start(G, &[("mesh.yaml", &yaml)]);
    mesh.backend("server-app", "127.0.0.1", 18651, 0);
    let node = format!("router~127.{G}.9.1~ingressgateway.istio-system~istio-system.svc.cluster.local");
    mesh.weft_proxy("ingress", &node, "istio-system", &[("istio", "ingressgateway")], &format!("127.{G}.9.1"), "delta");
    let url = format!("http://127.{G}.9.1:8080/");
    let token = signer.token(claims("carol", ISSUER, "any", now() + 3600, &[]));
    let with = |t: &str| mesh.curl(&[&url, "-H", &format!("Authorization: Bearer {t}")]).status;
    assert_eq!(with(&token), 200);
    assert_eq!(mesh.curl(&[&url]).status, 403);
    assert_eq!(with("a.b.c"), 401);
}

/// Keys from `jwksUri`: the proxy fetches the JWKS over HTTP and validates with it; the
/// token comes from a cookie (and then not from `Authorization`, as in Envoy).
#[test]
fn keys_can_come_from_a_jwks_uri() {
    const U: u8 = 66;
    let signer = Signer::new("remote");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("jwks.json"), signer.jwks()).unwrap_or_else(|e| panic!("{e}"));
    let keys = format!("jwksUri: http://127.{U}.1.50:18662/jwks.json\n    fromCookies: [session]");
    let mut mesh = Mesh::start(U, &[("mesh.yaml", &mesh_yaml(U, &keys, ""))]);
    let server = std::process::Command::new("python3")
        .args(["-m", "http.server", "18662", "--bind", &format!("127.{U}.1.50"), "--directory"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    mesh.adopt("jwks-server", server);
    mesh.backend("server-app", "127.0.0.1", 18661, 0);
    let node = format!("sidecar~127.{U}.1.1~server-v1.default~default.svc.cluster.local");
    mesh.weft_proxy("server-sidecar", &node, "default", &[("app", "server")], &format!("127.{U}.1.1"), "delta");
    let good = signer.token(claims("dave", ISSUER, "weft", now() + 3600, &[]));
    let forged = Signer::new("remote").token(claims("dave", ISSUER, "weft", now() + 3600, &[]));
    let url = format!("http://127.{U}.1.1:9080/");
    let with_cookie = |t: &str| {
        let r = mesh.curl(&[&url, "-H", &format!("Cookie: theme=dark; session={t}")]);
        (r.status, r.body)
    };
    mesh.wait_until("the JWKS to be fetched", || with_cookie(&good).0 == 200);
    assert_eq!(with_cookie(&forged), (401, "Jwt verification fails".to_owned()));
    // Only the cookie is read: a token in Authorization is not looked at.
    assert_eq!(call_in(&mesh, U, Some(&forged)).0, 200);
}
