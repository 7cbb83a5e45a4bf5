//! Which fields weft acts on. A field outside this table is parsed and validated but has
//! no effect yet, and `weft analyze` says so (WEFT0001) instead of ignoring it silently.
//!
//! This table is the contract of the translation to xDS: a field moves in here in the
//! same change that makes the translator honour it.

use std::collections::BTreeSet;

use serde_json::Value;
use weft_api::diag::codes;
use weft_api::istio::AuthorizationAction;
use weft_api::{Diagnostic, FieldPath, Resource, Spec};

/// Traffic-policy fields, shared by a DestinationRule's top level, its subsets and its
/// port-level settings.
const TRAFFIC_POLICY: &[&str] = &[
    "loadBalancer.simple",
    "loadBalancer.consistentHash.httpHeaderName",
    "loadBalancer.consistentHash.httpCookie",
    "loadBalancer.consistentHash.useSourceIp",
    "loadBalancer.consistentHash.httpQueryParameterName",
    "loadBalancer.consistentHash.ringHash",
    "loadBalancer.consistentHash.maglev",
    "loadBalancer.consistentHash.minimumRingSize",
    "connectionPool.tcp.maxConnections",
    "connectionPool.tcp.connectTimeout",
    "connectionPool.http.http1MaxPendingRequests",
    "connectionPool.http.http2MaxRequests",
    "connectionPool.http.maxRetries",
    "connectionPool.http.idleTimeout",
    "connectionPool.http.h2UpgradePolicy",
    "outlierDetection.consecutive5xxErrors",
    "outlierDetection.consecutiveGatewayErrors",
    "outlierDetection.consecutiveErrors",
    "outlierDetection.interval",
    "outlierDetection.baseEjectionTime",
    "outlierDetection.maxEjectionPercent",
    "outlierDetection.minHealthPercent",
    "portLevelSettings.port",
    "tls.mode",
    "tls.sni",
    "tls.caCertificates",
    "tls.subjectAltNames",
    "tls.insecureSkipVerify",
    "tls.clientCertificate",
    "tls.privateKey",
];

/// Supported field prefixes per kind, relative to `spec`. A prefix covers its subtree.
fn supported(kind: &str) -> &'static [&'static str] {
    match kind {
        "VirtualService" => &[
            "hosts",
            "gateways",
            "exportTo",
            "http.name",
            "http.match.uri",
            "http.match.scheme",
            "http.match.method",
            "http.match.authority",
            "http.match.headers",
            "http.match.queryParams",
            "http.match.withoutHeaders",
            "http.match.ignoreUriCase",
            "http.match.port",
            "http.match.sourceLabels",
            "http.match.sourceNamespace",
            "http.match.gateways",
            "http.match.name",
            "http.route",
            "http.redirect",
            "http.directResponse",
            "http.rewrite",
            "http.timeout",
            "http.retries.attempts",
            "http.retries.perTryTimeout",
            "http.retries.retryOn",
            "http.retries.backoff",
            "http.fault",
            "http.mirror",
            "http.mirrorPercentage",
            "http.mirrors",
            "http.corsPolicy.allowOrigins",
            "http.corsPolicy.allowMethods",
            "http.corsPolicy.allowHeaders",
            "http.corsPolicy.exposeHeaders",
            "http.corsPolicy.maxAge",
            "http.corsPolicy.allowCredentials",
            "http.headers",
            "tcp",
            // Routed by SNI at gateways (TLS passthrough) and at sidecars' TLS ports.
            "tls.match.sniHosts",
            "tls.match.port",
            "tls.match.gateways",
            "tls.route",
        ],
        "DestinationRule" => &["host", "exportTo", "subsets.name", "subsets.labels", "workloadSelector"],
        "Gateway" => &["selector", "servers.port", "servers.hosts", "servers.name", "servers.bind"],
        "ServiceEntry" => &[
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "exportTo",
            "workloadSelector",
            "subjectAltNames",
        ],
        "WorkloadEntry" => &["address", "ports", "labels", "locality", "weight", "serviceAccount"],
        "Sidecar" => &[
            "workloadSelector",
            "egress",
            "ingress.port",
            "ingress.bind",
            "ingress.captureMode",
            "ingress.defaultEndpoint",
            // Acted on for sidecars with traffic capture, where it decides unknown destinations.
            "outboundTrafficPolicy.mode",
        ],
        // Security and telemetry kinds are not supported yet as a whole; the parser says so
        // once per resource rather than once per field.
        _ => &[],
    }
}

/// Reports each unsupported field a resource sets, once per field.
pub fn check(resource: &Resource, out: &mut Vec<Diagnostic>) {
    let spec = match &resource.spec {
        Spec::VirtualService(s) => serde_json::to_value(s),
        Spec::DestinationRule(s) => serde_json::to_value(s),
        Spec::Gateway(s) => serde_json::to_value(s),
        Spec::ServiceEntry(s) => serde_json::to_value(s),
        Spec::WorkloadEntry(s) => serde_json::to_value(s),
        Spec::Sidecar(s) => serde_json::to_value(s),
        Spec::RequestAuthentication(s) => {
            for (i, rule) in s.jwt_rules.iter().enumerate() {
                let unsupported = [
                    ("spaceDelimitedClaims", !rule.space_delimited_claims.is_empty()),
                    ("presence", rule.presence.is_some()),
                ];
                for (field, set) in unsupported {
                    if set {
                        out.push(resource.diagnostic(
                            codes::NOT_SUPPORTED_YET,
                            &FieldPath::root().field("spec").field("jwtRules").index(i).field(field),
                            "not supported yet: weft accepts this field but does not act on it",
                        ));
                    }
                }
            }
            return;
        }
        Spec::AuthorizationPolicy(s) => {
            if s.action == Some(AuthorizationAction::Custom) {
                out.push(resource.diagnostic(
                    codes::NOT_SUPPORTED_YET,
                    &FieldPath::root().field("spec").field("action"),
                    "action CUSTOM is not supported yet (it needs external authorization): weft denies the requests this policy matches",
                ));
            }
            if s.target_ref.is_some() || !s.target_refs.is_empty() {
                out.push(resource.diagnostic(
                    codes::NOT_SUPPORTED_YET,
                    &FieldPath::root().field("spec").field("targetRefs"),
                    "targetRefs are not supported yet; this policy is not enforced (use a selector)",
                ));
            }
            return;
        }
        _ => return,
    };
    let Ok(mut spec) = spec else { return };
    if resource.kind == "Gateway" {
        // TLS passthrough (routed by SNI to VirtualService `tls` routes) is supported;
        // terminating TLS at the gateway is not yet, and stays reported.
        for server in spec.get_mut("servers").and_then(|s| s.as_array_mut()).into_iter().flatten() {
            let passthrough = server
                .get("tls")
                .and_then(|t| t.as_object())
                .is_some_and(|t| t.len() == 1 && t.get("mode").and_then(|m| m.as_str()) == Some("PASSTHROUGH"));
            if passthrough && let Some(server) = server.as_object_mut() {
                server.remove("tls");
            }
        }
    }
    let allowed = supported(&resource.kind);
    let is_supported = |pattern: &str| {
        allowed.iter().any(|a| covers(a, pattern))
            || (resource.kind == "DestinationRule" && traffic_policy_supported(pattern))
    };
    let mut reported = BTreeSet::new();
    walk(&spec, &FieldPath::root().field("spec"), "", &is_supported, &mut |path, pattern| {
        if reported.insert(pattern.to_owned()) {
            out.push(resource.diagnostic(
                codes::NOT_SUPPORTED_YET,
                path,
                "not supported yet: weft accepts this field but does not act on it",
            ));
        }
    });
}

fn covers(prefix: &str, pattern: &str) -> bool {
    pattern == prefix || (pattern.starts_with(prefix) && pattern.as_bytes().get(prefix.len()) == Some(&b'.'))
}

fn traffic_policy_supported(pattern: &str) -> bool {
    let rest = pattern
        .strip_prefix("subsets.trafficPolicy.")
        .or_else(|| pattern.strip_prefix("trafficPolicy."))
        .map(|p| p.strip_prefix("portLevelSettings.").filter(|q| *q != "port" && !q.starts_with("port.")).unwrap_or(p));
    match rest {
        Some(rest) => TRAFFIC_POLICY.iter().any(|a| covers(a, rest)),
        None => matches!(
            pattern,
            "trafficPolicy"
                | "subsets.trafficPolicy"
                | "trafficPolicy.portLevelSettings"
                | "subsets.trafficPolicy.portLevelSettings"
        ),
    }
}

/// Reports every set field that no supported prefix covers, descending into objects and
/// lists whose children may be supported even though they are not wholly.
fn walk(
    value: &Value,
    path: &FieldPath,
    pattern: &str,
    is_supported: &dyn Fn(&str) -> bool,
    report: &mut impl FnMut(&FieldPath, &str),
) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let child = if pattern.is_empty() { k.clone() } else { format!("{pattern}.{k}") };
                let child_path = path.field(k);
                if is_supported(&child) {
                    continue;
                }
                if (v.is_object() || v.is_array()) && !is_data_map(&child) {
                    walk(v, &child_path, &child, is_supported, report);
                } else {
                    report(&child_path, &child);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &path.index(i), pattern, is_supported, report);
            }
        }
        _ => {}
    }
}

/// Maps whose keys are data (labels, headers), not field names.
fn is_data_map(pattern: &str) -> bool {
    [
        "labels",
        "matchLabels",
        "headers",
        "queryParams",
        "withoutHeaders",
        "sourceLabels",
        "set",
        "add",
        "ports",
        "portLevelMtls",
        "customTags",
    ]
    .iter()
    .any(|leaf| pattern == *leaf || pattern.ends_with(&format!(".{leaf}")))
}
