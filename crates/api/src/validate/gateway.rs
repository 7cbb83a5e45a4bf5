//! Gateway API rules: fields the types do not know, and the checks the Gateway API's
//! CRD validation applies to Gateways, HTTPRoutes and GRPCRoutes.

use gateway_api::grpcroutes::GrpcRouteRulesMatchesMethodType;
use gateway_api::httproutes::{
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use serde_json::Value;

use crate::gateway::{GatewaySpec, GrpcRouteSpec, HttpRouteSpec};
use crate::path::FieldPath;
use crate::resource::Spec;

use super::Findings;

/// Paths of fields in `original` that deserialising into the typed `spec` dropped:
/// fields the Gateway API does not define, or misspelt ones.
pub fn unknown_fields(spec: &Spec, original: &Value, spec_path: &FieldPath) -> Vec<FieldPath> {
    let typed = match spec {
        Spec::KubeGateway(s) => serde_json::to_value(s),
        Spec::HttpRoute(s) => serde_json::to_value(s),
        Spec::GrpcRoute(s) => serde_json::to_value(s),
        Spec::ReferenceGrant(s) => serde_json::to_value(s),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    if let Ok(typed) = typed {
        dropped(original, &typed, spec_path, &mut out);
    }
    out
}

fn dropped(original: &Value, typed: &Value, path: &FieldPath, out: &mut Vec<FieldPath>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(kept) => dropped(value, kept, &path.field(key), out),
                    None if value.is_null() => {}
                    None => out.push(path.field(key)),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                dropped(x, y, &path.index(i), out);
            }
        }
        _ => {}
    }
}

fn hostnames(f: &mut Findings, path: &FieldPath, names: &[String]) {
    for (i, h) in names.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        if h.parse::<std::net::IpAddr>().is_ok() || bare.contains('*') || !super::is_dns1123_subdomain(bare) {
            f.error(
                &path.index(i),
                format!("{h:?} is not a valid hostname: a DNS name, optionally starting with \"*.\""),
            );
        }
    }
}

fn weight_and_port(f: &mut Findings, path: &FieldPath, weight: Option<i32>, port: Option<i32>, kind: Option<&str>) {
    if let Some(w) = weight
        && !(0..=1_000_000).contains(&w)
    {
        f.error(&path.field("weight"), format!("{w} must be 0..1000000"));
    }
    match port {
        Some(p) if !(1..=65535).contains(&p) => f.error(&path.field("port"), format!("{p} must be 1..65535")),
        None if kind.is_none_or(|k| k == "Service") => f.error(&path.field("port"), "a Service backend needs a port"),
        _ => {}
    }
}

pub(super) fn http_route(f: &mut Findings, spec: &FieldPath, route: &HttpRouteSpec) {
    hostnames(f, &spec.field("hostnames"), route.hostnames.as_deref().unwrap_or_default());
    for (i, rule) in route.rules.iter().flatten().enumerate() {
        let rpath = spec.field("rules").index(i);
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let mpath = rpath.field("matches").index(j);
            if let Some(p) = &m.path {
                let value = p.value.as_deref().unwrap_or("/");
                let vpath = mpath.field("path").field("value");
                match p.r#type.as_ref().unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix) {
                    HttpRouteRulesMatchesPathType::RegularExpression => f.regex(&vpath, value),
                    _ if !value.starts_with('/') => f.error(&vpath, format!("{value:?} must start with \"/\"")),
                    _ => {}
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                if h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression) {
                    f.regex(&mpath.field("headers").index(k).field("value"), &h.value);
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
                    f.regex(&mpath.field("queryParams").index(k).field("value"), &q.value);
                }
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            weight_and_port(f, &rpath.field("backendRefs").index(j), b.weight, b.port, b.kind.as_deref());
        }
    }
}

pub(super) fn grpc_route(f: &mut Findings, spec: &FieldPath, route: &GrpcRouteSpec) {
    hostnames(f, &spec.field("hostnames"), route.hostnames.as_deref().unwrap_or_default());
    for (i, rule) in route.rules.iter().flatten().enumerate() {
        let rpath = spec.field("rules").index(i);
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            if let Some(method) = &m.method {
                let mpath = rpath.field("matches").index(j).field("method");
                if method.service.is_none() && method.method.is_none() {
                    f.error(&mpath, "a method match needs service or method");
                }
                if method.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression) {
                    for (field, v) in [("service", &method.service), ("method", &method.method)] {
                        if let Some(v) = v {
                            f.regex(&mpath.field(field), v);
                        }
                    }
                }
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            weight_and_port(f, &rpath.field("backendRefs").index(j), b.weight, b.port, b.kind.as_deref());
        }
    }
}

pub(super) fn gateway(f: &mut Findings, spec: &FieldPath, gw: &GatewaySpec) {
    if gw.listeners.is_empty() {
        f.error(&spec.field("listeners"), "a Gateway needs at least one listener");
    }
    let mut names = std::collections::HashSet::new();
    for (i, l) in gw.listeners.iter().enumerate() {
        let path = spec.field("listeners").index(i);
        if !names.insert(l.name.as_str()) {
            f.error(&path.field("name"), format!("duplicate listener name {:?}", l.name));
        }
        if !(1..=65535).contains(&l.port) {
            f.error(&path.field("port"), format!("{} must be 1..65535", l.port));
        }
        if let Some(h) = &l.hostname {
            hostnames(f, &path.field("hostname").parent().unwrap_or_default(), std::slice::from_ref(h));
        }
        let tls_protocol = matches!(l.protocol.as_str(), "HTTPS" | "TLS");
        if tls_protocol && l.tls.is_none() {
            f.error(&path.field("tls"), format!("a listener with protocol {} needs tls settings", l.protocol));
        }
        if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS" | "TLS" | "TCP" | "UDP") && !l.protocol.contains('/') {
            f.error(
                &path.field("protocol"),
                format!("{:?} is not HTTP, HTTPS, TLS, TCP, UDP or a domain-prefixed protocol", l.protocol),
            );
        }
    }
    if gw.gateway_class_name.is_empty() {
        f.error(&spec.field("gatewayClassName"), "required field is missing");
    }
}
