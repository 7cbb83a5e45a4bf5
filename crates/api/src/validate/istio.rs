//! Semantic rules for Istio kinds, following Istio's admission validation.

use std::collections::{BTreeMap, HashSet};

use crate::diag::codes;
use crate::istio::*;
use crate::path::FieldPath;

use super::Findings;
use super::net::{host_covers, is_dns1123_label, is_ip_or_cidr, is_wildcard_hostname};

/// Protocols Istio recognises on ports (matched case-insensitively).
pub const PROTOCOLS: &[&str] =
    &["HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "HTTP_PROXY", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP"];

/// `retryOn` conditions Istio accepts, besides HTTP status codes.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Attributes an AuthorizationPolicy `when` condition may test.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

fn is_protocol(p: &str) -> bool {
    PROTOCOLS.iter().any(|k| k.eq_ignore_ascii_case(p))
}

fn port_ok(n: u32) -> bool {
    (1..=65535).contains(&n)
}

pub(super) fn export_to(f: &mut Findings, path: &FieldPath, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if !(v == "." || v == "*" || v == "~" || is_dns1123_label(v)) {
            f.error(&path.index(i), format!("{v:?} is not \".\", \"*\", \"~\" or a namespace name"));
        }
    }
    if values.len() > 1 && values.iter().any(|v| v == "~" || v == "*") {
        f.error(path, "\"*\" and \"~\" must be the only entry of exportTo");
    }
}

fn selector_labels(f: &mut Findings, path: &FieldPath, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            f.error(&path.key(k), format!("{k:?} is not a valid label key"));
        }
        if !is_label_value(v) {
            f.error(&path.key(k), format!("{v:?} is not a valid label value"));
        }
    }
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
    (prefix.is_empty() || super::is_dns1123_subdomain(prefix)) && is_label_value(name) && !name.is_empty()
}

fn is_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

fn header_name(f: &mut Findings, path: &FieldPath, name: &str) {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        f.error(path, format!("{name:?} is not a valid HTTP header name"));
    }
}

fn string_match(f: &mut Findings, path: &FieldPath, m: &StringMatch) {
    if let Some(regex) = &m.regex {
        f.regex(&path.field("regex"), regex);
    }
}

// ---------------------------------------------------------------- VirtualService

pub(super) fn virtual_service(f: &mut Findings, spec: &FieldPath, vs: &VirtualServiceSpec) {
    let delegate = vs.hosts.is_empty();
    let applies_to_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    if delegate {
        if !vs.gateways.is_empty() {
            f.error(&spec.field("gateways"), "a delegate VirtualService (one without hosts) must not name gateways");
        }
        if !vs.tcp.is_empty() || !vs.tls.is_empty() {
            f.error(spec, "a delegate VirtualService (one without hosts) may only have http routes");
        }
    }
    for (i, host) in vs.hosts.iter().enumerate() {
        let path = spec.field("hosts").index(i);
        if host == "*" && applies_to_mesh {
            f.error(&path, "wildcard host \"*\" is not allowed for VirtualServices bound to the mesh gateway");
        } else if !is_wildcard_hostname(host) {
            f.error(
                &path,
                format!("{host:?} is not a valid host: expected a DNS name, optionally starting with \"*\""),
            );
        }
    }
    for (i, gw) in vs.gateways.iter().enumerate() {
        gateway_name(f, &spec.field("gateways").index(i), gw);
    }
    export_to(f, &spec.field("exportTo"), &vs.export_to);
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        f.error(spec, "at least one of http, tls or tcp routes is required");
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(f, &spec.field("http").index(i), route, delegate);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        let path = spec.field("tls").index(i);
        if route.r#match.is_empty() {
            f.error(&path.field("match"), "TLS routes need at least one match with sniHosts");
        }
        for (j, m) in route.r#match.iter().enumerate() {
            let mpath = path.field("match").index(j);
            if m.sni_hosts.is_empty() {
                f.error(&mpath.field("sniHosts"), "at least one SNI host is required");
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                if !is_wildcard_hostname(sni) {
                    f.error(&mpath.field("sniHosts").index(k), format!("{sni:?} is not a valid host"));
                } else if !vs.hosts.iter().any(|h| host_covers(h, sni) || host_covers(sni, h)) {
                    f.error(
                        &mpath.field("sniHosts").index(k),
                        format!("SNI host {sni:?} is not covered by any of the VirtualService's hosts"),
                    );
                }
            }
            l4_common(f, &mpath, m.port, &m.destination_subnets, &m.gateways);
        }
        route_destinations(f, &path.field("route"), route.route.iter().map(|r| (r.destination.as_ref(), r.weight)));
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let path = spec.field("tcp").index(i);
        for (j, m) in route.r#match.iter().enumerate() {
            let mpath = path.field("match").index(j);
            l4_common(f, &mpath, m.port, &m.destination_subnets, &m.gateways);
            if let Some(subnet) = &m.source_subnet
                && !is_ip_or_cidr(subnet)
            {
                f.error(&mpath.field("sourceSubnet"), format!("{subnet:?} is not an IP address or CIDR block"));
            }
        }
        route_destinations(f, &path.field("route"), route.route.iter().map(|r| (r.destination.as_ref(), r.weight)));
    }
}

fn l4_common(f: &mut Findings, path: &FieldPath, port: Option<u32>, subnets: &[String], gateways: &[String]) {
    if let Some(p) = port
        && !port_ok(p)
    {
        f.error(&path.field("port"), format!("{p} must be 1..65535"));
    }
    for (i, s) in subnets.iter().enumerate() {
        if !is_ip_or_cidr(s) {
            f.error(&path.field("destinationSubnets").index(i), format!("{s:?} is not an IP address or CIDR block"));
        }
    }
    for (i, g) in gateways.iter().enumerate() {
        gateway_name(f, &path.field("gateways").index(i), g);
    }
}

/// `mesh`, `name`, or `namespace/name`.
fn gateway_name(f: &mut Findings, path: &FieldPath, name: &str) {
    if name == "mesh" {
        return;
    }
    let valid = match name.split_once('/') {
        Some((ns, gw)) => is_dns1123_label(ns) && super::is_dns1123_subdomain(gw),
        None => super::is_dns1123_subdomain(name),
    };
    if !valid {
        f.error(
            path,
            format!("{name:?} is not a gateway reference: expected \"mesh\", \"name\" or \"namespace/name\""),
        );
    }
}

fn http_route(f: &mut Findings, path: &FieldPath, r: &HttpRoute, in_delegate: bool) {
    let has_route = !r.route.is_empty();
    let actions = [has_route, r.redirect.is_some(), r.direct_response.is_some(), r.delegate.is_some()];
    match actions.iter().filter(|a| **a).count() {
        0 => f.error(path, "an HTTP route needs one of route, redirect, directResponse or delegate"),
        1 => {}
        _ => f.error(path, "an HTTP route may have only one of route, redirect, directResponse and delegate"),
    }
    if r.delegate.is_some() {
        if in_delegate {
            f.error(&path.field("delegate"), "a delegate VirtualService cannot delegate again");
        }
        for (field, set) in
            [("rewrite", r.rewrite.is_some()), ("fault", r.fault.is_some()), ("mirror", r.mirror.is_some())]
        {
            if set {
                f.error(&path.field(field), "cannot be combined with delegate");
            }
        }
    }
    if r.redirect.is_some() || r.direct_response.is_some() {
        for (field, set) in
            [("rewrite", r.rewrite.is_some()), ("retries", r.retries.is_some()), ("mirror", r.mirror.is_some())]
        {
            if set {
                f.error(&path.field(field), "cannot be combined with redirect or directResponse");
            }
        }
    }
    for (i, m) in r.r#match.iter().enumerate() {
        http_match(f, &path.field("match").index(i), m);
    }
    route_destinations(f, &path.field("route"), r.route.iter().map(|d| (d.destination.as_ref(), d.weight)));
    for (i, d) in r.route.iter().enumerate() {
        if let Some(h) = &d.headers {
            headers(f, &path.field("route").index(i).field("headers"), h);
        }
    }
    if let Some(redirect) = &r.redirect {
        let rpath = path.field("redirect");
        if redirect.uri.is_none()
            && redirect.authority.is_none()
            && redirect.scheme.is_none()
            && redirect.port.is_none()
            && redirect.derive_port.is_none()
            && redirect.prefix_rewrite.is_none()
        {
            f.error(&rpath, "a redirect must change at least one of uri, authority, scheme, port or derivePort");
        }
        if redirect.uri.is_some() && redirect.prefix_rewrite.is_some() {
            f.error(&rpath, "only one of uri and prefixRewrite may be set");
        }
        if let Some(code) = redirect.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            f.error(&rpath.field("redirectCode"), format!("{code} is not a redirect status (301, 302, 303, 307, 308)"));
        }
        if let Some(p) = redirect.port
            && !port_ok(p)
        {
            f.error(&rpath.field("port"), format!("{p} must be 1..65535"));
        }
    }
    if let Some(dr) = &r.direct_response {
        let status = dr.status.unwrap_or(0);
        if !(200..=599).contains(&status) {
            f.error(&path.field("directResponse").field("status"), format!("{status} must be 200..599"));
        }
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            f.error(&path.field("rewrite"), "only one of uri and uriRegexRewrite may be set");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            f.regex(
                &path.field("rewrite").field("uriRegexRewrite").field("match"),
                rr.r#match.as_deref().unwrap_or(""),
            );
        }
    }
    f.duration(&path.field("timeout"), r.timeout.as_deref());
    if let Some(retries) = &r.retries {
        let rpath = path.field("retries");
        if retries.attempts.unwrap_or(0) < 0 {
            f.error(&rpath.field("attempts"), "must not be negative");
        }
        f.duration(&rpath.field("perTryTimeout"), retries.per_try_timeout.as_deref());
        f.duration(&rpath.field("backoff"), retries.backoff.as_deref());
        if let Some(on) = &retries.retry_on {
            for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let status = cond.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c));
                if !status && !RETRY_ON.contains(&cond) {
                    f.error(
                        &rpath.field("retryOn"),
                        format!(
                            "{cond:?} is not a retry condition Istio knows ({}, or an HTTP status)",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        let fpath = path.field("fault");
        if fault.abort.is_none() && fault.delay.is_none() {
            f.error(&fpath, "a fault needs a delay or an abort");
        }
        if let Some(abort) = &fault.abort {
            let apath = fpath.field("abort");
            if let Some(code) = abort.http_status
                && !(200..=599).contains(&code)
            {
                f.error(&apath.field("httpStatus"), format!("{code} must be 200..599"));
            }
            if abort.http_status.is_none() && abort.grpc_status.is_none() && abort.http2_error.is_none() {
                f.error(&apath, "an abort needs httpStatus or grpcStatus");
            }
            f.percentage(&apath.field("percentage").field("value"), abort.percentage.as_ref().and_then(|p| p.value));
        }
        if let Some(delay) = &fault.delay {
            let dpath = fpath.field("delay");
            if delay.fixed_delay.is_none() && delay.exponential_delay.is_none() {
                f.error(&dpath, "a delay needs fixedDelay");
            }
            if delay.exponential_delay.is_some() {
                f.error(&dpath.field("exponentialDelay"), "exponentialDelay is not supported, use fixedDelay");
            }
            if let Some(p) = delay.percent
                && !(0..=100).contains(&p)
            {
                f.error(&dpath.field("percent"), format!("{p} must be 0..100"));
            }
            f.percentage(&dpath.field("percentage").field("value"), delay.percentage.as_ref().and_then(|p| p.value));
        }
    }
    if let Some(m) = &r.mirror {
        destination(f, &path.field("mirror"), m);
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        f.error(&path.field("mirrors"), "only one of mirror and mirrors may be set");
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let mpath = path.field("mirrors").index(i);
        match &m.destination {
            Some(d) => destination(f, &mpath.field("destination"), d),
            None => f.error(&mpath.field("destination"), "required field is missing"),
        }
        f.percentage(&mpath.field("percentage").field("value"), m.percentage.as_ref().and_then(|p| p.value));
    }
    if let Some(p) = r.mirror_percent.or(r.mirror_percent_snake)
        && p > 100
    {
        f.error(&path.field("mirrorPercent"), format!("{p} must be 0..100"));
    }
    f.percentage(&path.field("mirrorPercentage").field("value"), r.mirror_percentage.as_ref().and_then(|p| p.value));
    if let Some(h) = &r.headers {
        headers(f, &path.field("headers"), h);
    }
    if let Some(cors) = &r.cors_policy {
        let cpath = path.field("corsPolicy");
        for (i, o) in cors.allow_origins.iter().enumerate() {
            string_match(f, &cpath.field("allowOrigins").index(i), o);
        }
        if !cors.allow_origin.is_empty() {
            f.warn(&cpath.field("allowOrigin"), "allowOrigin is deprecated; use allowOrigins");
        }
        for (i, m) in cors.allow_methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                f.error(&cpath.field("allowMethods").index(i), format!("{m:?} is not an HTTP method"));
            }
        }
        f.duration(&cpath.field("maxAge"), cors.max_age.as_deref());
    }
}

fn http_match(f: &mut Findings, path: &FieldPath, m: &HttpMatchRequest) {
    for (field, sm) in [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(sm) = sm {
            string_match(f, &path.field(field), sm);
        }
    }
    if let Some(uri) = &m.uri {
        for (name, v) in [("exact", &uri.exact), ("prefix", &uri.prefix)] {
            if v.as_deref() == Some("") {
                f.error(&path.field("uri").field(name), "must not be empty");
            }
        }
    }
    for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
        for (name, sm) in map {
            let hpath = path.field(field).key(name);
            header_name(f, &hpath, name);
            string_match(f, &hpath, sm);
        }
    }
    for (name, sm) in &m.query_params {
        string_match(f, &path.field("queryParams").key(name), sm);
    }
    if let Some(p) = m.port
        && !port_ok(p)
    {
        f.error(&path.field("port"), format!("{p} must be 1..65535"));
    }
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_name(f, &path.field("gateways").index(i), g);
    }
}

fn headers(f: &mut Findings, path: &FieldPath, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (op, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for name in names {
                let hpath = path.field(side).field(op);
                header_name(f, &hpath, name);
                if name.starts_with(':') || name.eq_ignore_ascii_case("host") && op == "remove" {
                    f.error(&hpath, format!("{name:?} cannot be changed this way"));
                }
            }
        }
    }
}

fn destination(f: &mut Findings, path: &FieldPath, d: &Destination) {
    match d.host.as_deref() {
        None | Some("") => f.error(&path.field("host"), "required field is missing"),
        Some("*") => f.error(&path.field("host"), "a destination host cannot be \"*\""),
        Some(h) if !is_wildcard_hostname(h) => f.error(&path.field("host"), format!("{h:?} is not a valid host")),
        Some(_) => {}
    }
    if let Some(subset) = &d.subset
        && !is_dns1123_label(subset)
        && !subset.is_empty()
    {
        f.error(&path.field("subset"), format!("{subset:?} is not a valid subset name"));
    }
    if let Some(p) = d.port.as_ref().and_then(|p| p.number)
        && !port_ok(p)
    {
        f.error(&path.field("port").field("number"), format!("{p} must be 1..65535"));
    }
}

fn route_destinations<'a>(
    f: &mut Findings,
    path: &FieldPath,
    routes: impl Iterator<Item = (Option<&'a Destination>, Option<i32>)>,
) {
    let mut total = 0i64;
    let mut n = 0;
    for (i, (dest, weight)) in routes.enumerate() {
        n += 1;
        let rpath = path.index(i);
        match dest {
            Some(d) => destination(f, &rpath.field("destination"), d),
            None => f.error(&rpath.field("destination"), "required field is missing"),
        }
        let w = weight.unwrap_or(0);
        if w < 0 {
            f.error(&rpath.field("weight"), "must not be negative");
        }
        total += i64::from(w.max(0));
    }
    if n > 1 && total == 0 {
        f.error(path, "the destinations' weights add up to 0: give at least one a weight");
    } else if n > 1 && total != 100 {
        f.note(
            codes::WEIGHTS_NOT_100,
            path,
            format!("weights add up to {total}, not 100: traffic is split in proportion to them"),
        );
    }
}

// ---------------------------------------------------------------- DestinationRule

pub(super) fn destination_rule(f: &mut Findings, spec: &FieldPath, dr: &DestinationRuleSpec) {
    match dr.host.as_deref() {
        None | Some("") => f.error(&spec.field("host"), "required field is missing"),
        Some(h) if !is_wildcard_hostname(h) => f.error(&spec.field("host"), format!("{h:?} is not a valid host")),
        Some(_) => {}
    }
    export_to(f, &spec.field("exportTo"), &dr.export_to);
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(f, &spec.field("trafficPolicy"), tp);
    }
    let mut names = HashSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let path = spec.field("subsets").index(i);
        match s.name.as_deref() {
            None | Some("") => f.error(&path.field("name"), "required field is missing"),
            Some(n) if !is_dns1123_label(n) => f.error(
                &path.field("name"),
                format!("{n:?} is not a valid subset name: lower-case letters, digits and '-'"),
            ),
            Some(n) if !names.insert(n) => f.error(&path.field("name"), format!("duplicate subset name {n:?}")),
            Some(_) => {}
        }
        selector_labels(f, &path.field("labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(f, &path.field("trafficPolicy"), tp);
        }
    }
    if let Some(ws) = &dr.workload_selector {
        selector_labels(f, &spec.field("workloadSelector").field("matchLabels"), &ws.match_labels);
    }
}

fn traffic_policy(f: &mut Findings, path: &FieldPath, tp: &TrafficPolicy) {
    port_policy(f, path, tp.load_balancer.as_ref(), tp.outlier_detection.as_ref(), tp.tls.as_ref());
    let mut ports = HashSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let ppath = path.field("portLevelSettings").index(i);
        match p.port.as_ref().and_then(|p| p.number) {
            None => f.error(&ppath.field("port"), "port-level settings need a port number"),
            Some(n) if !port_ok(n) => f.error(&ppath.field("port").field("number"), format!("{n} must be 1..65535")),
            Some(n) if !ports.insert(n) => f.error(&ppath.field("port").field("number"), format!("duplicate port {n}")),
            Some(_) => {}
        }
        port_policy(f, &ppath, p.load_balancer.as_ref(), p.outlier_detection.as_ref(), p.tls.as_ref());
    }
}

fn port_policy(
    f: &mut Findings,
    path: &FieldPath,
    lb: Option<&LoadBalancerSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let lpath = path.field("loadBalancer");
        if let Some(loc) = &lb.locality_lb_setting
            && !loc.distribute.is_empty()
            && !loc.failover.is_empty()
        {
            f.error(&lpath.field("localityLbSetting"), "distribute and failover cannot both be set");
        }
        if let Some(ch) = &lb.consistent_hash
            && let Some(cookie) = &ch.http_cookie
            && cookie.name.as_deref().unwrap_or("").is_empty()
        {
            f.error(&lpath.field("consistentHash").field("httpCookie").field("name"), "required field is missing");
        }
    }
    if let Some(od) = od {
        let opath = path.field("outlierDetection");
        for (field, v) in [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)]
        {
            if let Some(v) = v
                && !(0..=100).contains(&v)
            {
                f.error(&opath.field(field), format!("{v} must be 0..100"));
            }
        }
        if od.consecutive_errors.is_some_and(|e| e < 0) {
            f.error(&opath.field("consecutiveErrors"), "must not be negative");
        }
        f.duration(&opath.field("interval"), od.interval.as_deref());
        f.duration(&opath.field("baseEjectionTime"), od.base_ejection_time.as_deref());
    }
    if let Some(tls) = tls {
        let tpath = path.field("tls");
        if tls.mode == Some(ClientTlsMode::Mutual) && tls.credential_name.is_none() {
            if tls.client_certificate.is_none() {
                f.error(&tpath.field("clientCertificate"), "MUTUAL mode needs clientCertificate (or credentialName)");
            }
            if tls.private_key.is_none() {
                f.error(&tpath.field("privateKey"), "MUTUAL mode needs privateKey (or credentialName)");
            }
        }
        if tls.mode == Some(ClientTlsMode::IstioMutual) {
            for (field, set) in [
                ("clientCertificate", tls.client_certificate.is_some()),
                ("privateKey", tls.private_key.is_some()),
                ("caCertificates", tls.ca_certificates.is_some()),
                ("credentialName", tls.credential_name.is_some()),
            ] {
                if set {
                    f.error(
                        &tpath.field(field),
                        "ISTIO_MUTUAL uses the mesh's own certificates; this field must not be set",
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Gateway

pub(super) fn gateway(f: &mut Findings, spec: &FieldPath, gw: &GatewaySpec) {
    if gw.servers.is_empty() {
        f.error(&spec.field("servers"), "a Gateway needs at least one server");
    }
    let mut port_names: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let path = spec.field("servers").index(i);
        let protocol = s.port.as_ref().and_then(|p| p.protocol.as_deref()).unwrap_or("");
        if let Some(port) = &s.port {
            let ppath = path.field("port");
            match port.number {
                Some(n) if !port_ok(n) => f.error(&ppath.field("number"), format!("{n} must be 1..65535")),
                None => f.error(&ppath.field("number"), "required field is missing"),
                _ => {}
            }
            if !is_protocol(protocol) {
                f.error(
                    &ppath.field("protocol"),
                    format!("{protocol:?} is not a protocol Istio knows ({})", PROTOCOLS.join(", ")),
                );
            }
            if let (Some(name), Some(number)) = (port.name.as_deref(), port.number)
                && let Some(other) = port_names.insert(name, number)
                && other != number
            {
                f.error(&ppath.field("name"), format!("port name {name:?} is already used for port {other}"));
            }
        }
        if s.hosts.is_empty() {
            f.error(&path.field("hosts"), "a server needs at least one host");
        }
        for (j, host) in s.hosts.iter().enumerate() {
            let (ns, name) = host.split_once('/').unwrap_or(("*", host));
            let ns_ok = ns == "*" || ns == "." || is_dns1123_label(ns);
            if !ns_ok || !is_wildcard_hostname(name) {
                f.error(
                    &path.field("hosts").index(j),
                    format!("{host:?} is not a valid host: expected [namespace/]dnsName"),
                );
            }
        }
        let tls_protocol = protocol.eq_ignore_ascii_case("HTTPS") || protocol.eq_ignore_ascii_case("TLS");
        match &s.tls {
            None if tls_protocol => {
                f.error(&path.field("tls"), format!("a server with protocol {protocol} needs tls settings"))
            }
            Some(tls) => server_tls(f, &path.field("tls"), tls, protocol),
            None => {}
        }
        if let Some(bind) = &s.bind
            && !bind.starts_with("unix://")
            && bind.parse::<std::net::IpAddr>().is_err()
        {
            f.error(&path.field("bind"), format!("{bind:?} is not an IP address or unix:// path"));
        }
    }
    selector_labels(f, &spec.field("selector"), &gw.selector);
}

fn server_tls(f: &mut Findings, path: &FieldPath, tls: &ServerTlsSettings, protocol: &str) {
    if tls.https_redirect == Some(true) && tls.mode.is_none() {
        return;
    }
    let has_credential =
        tls.credential_name.is_some() || !tls.credential_names.is_empty() || !tls.tls_certificates.is_empty();
    match tls.mode {
        Some(ServerTlsMode::Simple | ServerTlsMode::Mutual) if !has_credential => {
            if tls.server_certificate.is_none() {
                f.error(
                    &path.field("serverCertificate"),
                    "SIMPLE and MUTUAL modes need serverCertificate (or credentialName)",
                );
            }
            if tls.private_key.is_none() {
                f.error(&path.field("privateKey"), "SIMPLE and MUTUAL modes need privateKey (or credentialName)");
            }
            if tls.mode == Some(ServerTlsMode::Mutual) && tls.ca_certificates.is_none() {
                f.error(
                    &path.field("caCertificates"),
                    "MUTUAL mode needs caCertificates to verify clients (or credentialName)",
                );
            }
        }
        Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough) if protocol.eq_ignore_ascii_case("HTTPS") => {
            f.warn(
                &path.field("mode"),
                "passthrough on an HTTPS server: the gateway cannot see HTTP inside; use protocol TLS",
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------- ServiceEntry, WorkloadEntry

pub(super) fn service_entry(f: &mut Findings, spec: &FieldPath, se: &ServiceEntrySpec) {
    if se.hosts.is_empty() {
        f.error(&spec.field("hosts"), "a ServiceEntry needs at least one host");
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    let dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    for (i, host) in se.hosts.iter().enumerate() {
        let path = spec.field("hosts").index(i);
        if !is_wildcard_hostname(host) {
            f.error(&path, format!("{host:?} is not a valid host"));
        } else if dns && se.endpoints.is_empty() && host.contains('*') {
            f.error(&path, "with DNS resolution and no endpoints, hosts must be names that resolve, not wildcards");
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        if !is_ip_or_cidr(a) {
            f.error(&spec.field("addresses").index(i), format!("{a:?} is not an IP address or CIDR block"));
        }
    }
    export_to(f, &spec.field("exportTo"), &se.export_to);
    let mut names = HashSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let path = spec.field("ports").index(i);
        port_fields(f, &path, p.number, p.protocol.as_deref(), p.target_port);
        if let Some(name) = &p.name
            && !names.insert(name.as_str())
        {
            f.error(&path.field("name"), format!("duplicate port name {name:?}"));
        }
    }
    for (i, ep) in se.endpoints.iter().enumerate() {
        let path = spec.field("endpoints").index(i);
        workload_entry(f, &path, ep);
        if resolution == Resolution::Static
            && let Some(addr) = &ep.address
            && !addr.starts_with("unix://")
            && addr.parse::<std::net::IpAddr>().is_err()
        {
            f.error(&path.field("address"), format!("STATIC resolution needs IP addresses, not {addr:?}"));
        }
        for name in ep.ports.keys() {
            if !se.ports.iter().any(|p| p.name.as_deref() == Some(name)) {
                f.error(
                    &path.field("ports").key(name),
                    format!("port {name:?} is not one of the ServiceEntry's port names"),
                );
            }
        }
    }
    if let Some(ws) = &se.workload_selector {
        selector_labels(f, &spec.field("workloadSelector").field("labels"), &ws.labels);
    }
}

fn port_fields(f: &mut Findings, path: &FieldPath, number: Option<u32>, protocol: Option<&str>, target: Option<u32>) {
    if let Some(n) = number
        && !port_ok(n)
    {
        f.error(&path.field("number"), format!("{n} must be 1..65535"));
    }
    if let Some(p) = protocol
        && !is_protocol(p)
    {
        f.error(&path.field("protocol"), format!("{p:?} is not a protocol Istio knows ({})", PROTOCOLS.join(", ")));
    }
    if let Some(t) = target
        && !port_ok(t)
    {
        f.error(&path.field("targetPort"), format!("{t} must be 1..65535"));
    }
}

pub(super) fn workload_entry(f: &mut Findings, spec: &FieldPath, we: &WorkloadEntrySpec) {
    match we.address.as_deref() {
        None | Some("") if we.network.is_none() => {
            f.error(&spec.field("address"), "required field is missing (or set network)")
        }
        Some(a)
            if !a.starts_with("unix://") && a.parse::<std::net::IpAddr>().is_err() && !is_wildcard_hostname(a)
                || a.contains('*') =>
        {
            f.error(&spec.field("address"), format!("{a:?} is not an IP address, host name or unix:// path"));
        }
        _ => {}
    }
    for (name, port) in &we.ports {
        if !port_ok(*port) {
            f.error(&spec.field("ports").key(name), format!("{port} must be 1..65535"));
        }
    }
    selector_labels(f, &spec.field("labels"), &we.labels);
    if let Some(sa) = &we.service_account
        && !super::is_dns1123_subdomain(sa)
    {
        f.error(&spec.field("serviceAccount"), format!("{sa:?} is not a valid service account name"));
    }
}

// ---------------------------------------------------------------- Sidecar

pub(super) fn sidecar(f: &mut Findings, spec: &FieldPath, sc: &SidecarSpec) {
    if sc.egress.is_empty()
        && sc.ingress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        f.error(
            spec,
            "a Sidecar needs at least one of egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
        );
    }
    let mut seen = HashSet::new();
    for (i, e) in sc.egress.iter().enumerate() {
        let path = spec.field("egress").index(i);
        if e.hosts.is_empty() {
            f.error(&path.field("hosts"), "an egress listener needs at least one host");
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let ok = match h.split_once('/') {
                Some((ns, host)) => {
                    (ns == "*" || ns == "." || ns == "~" || is_dns1123_label(ns))
                        && (host == "*" || is_wildcard_hostname(host))
                }
                None => false,
            };
            if !ok {
                f.error(
                    &path.field("hosts").index(j),
                    format!("{h:?} is not namespace/dnsName (namespace may be *, . or ~)"),
                );
            }
        }
        if let Some(p) = &e.port {
            port_fields(f, &path.field("port"), p.number, p.protocol.as_deref(), None);
        } else if i + 1 != sc.egress.len() {
            f.error(&path, "an egress listener without a port catches all other traffic and must be the last one");
        } else if e.bind.is_some() {
            f.error(&path.field("bind"), "an egress listener without a port cannot bind an address");
        }
        if let Some(bind) = &e.bind
            && !bind.starts_with("unix://")
            && bind.parse::<std::net::IpAddr>().is_err()
        {
            f.error(&path.field("bind"), format!("{bind:?} is not an IP address or unix:// path"));
        }
        let key = (e.bind.clone(), e.port.as_ref().and_then(|p| p.number));
        if !seen.insert(key) {
            f.error(&path, "another egress listener already has this port and bind address");
        }
    }
    let mut ports = HashSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let path = spec.field("ingress").index(i);
        match &ing.port {
            Some(p) => {
                port_fields(f, &path.field("port"), p.number, p.protocol.as_deref(), p.target_port);
                if let Some(n) = p.number
                    && !ports.insert((ing.bind.clone(), n))
                {
                    f.error(
                        &path.field("port").field("number"),
                        format!("another ingress listener already uses port {n}"),
                    );
                }
            }
            None => f.error(&path.field("port"), "required field is missing"),
        }
        if let Some(ep) = &ing.default_endpoint
            && !valid_default_endpoint(ep)
        {
            f.error(
                &path.field("defaultEndpoint"),
                format!("{ep:?} must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix://PATH"),
            );
        }
    }
    // An ingress and an egress listener cannot both own one address and port.
    for (i, ing) in sc.ingress.iter().enumerate() {
        let port = ing.port.as_ref().and_then(|p| p.number);
        let clash = sc
            .egress
            .iter()
            .any(|e| e.port.as_ref().and_then(|p| p.number) == port && e.bind.is_some() && e.bind == ing.bind);
        if port.is_some() && clash {
            f.error(
                &spec.field("ingress").index(i).field("bind"),
                format!(
                    "{}:{} is also an egress listener's address; give them different bind addresses",
                    ing.bind.as_deref().unwrap_or(""),
                    port.unwrap_or(0)
                ),
            );
        }
    }
    if let Some(otp) = &sc.outbound_traffic_policy
        && otp.egress_proxy.is_some()
        && otp.mode != Some(OutboundTrafficPolicyMode::AllowAny)
    {
        f.error(&spec.field("outboundTrafficPolicy").field("egressProxy"), "egressProxy needs mode ALLOW_ANY");
    }
    if let Some(ws) = &sc.workload_selector {
        selector_labels(f, &spec.field("workloadSelector").field("labels"), &ws.labels);
    }
}

fn valid_default_endpoint(ep: &str) -> bool {
    if let Some(path) = ep.strip_prefix("unix://") {
        return path.starts_with('/') || path.starts_with('@');
    }
    let Some((host, port)) = ep.rsplit_once(':') else { return false };
    matches!(host, "127.0.0.1" | "0.0.0.0" | "[::1]" | "[::]") && port.parse::<u32>().is_ok_and(port_ok)
}

// ---------------------------------------------------------------- security

pub(super) fn authorization_policy(f: &mut Findings, spec: &FieldPath, ap: &AuthorizationPolicySpec) {
    let custom = ap.action == Some(AuthorizationAction::Custom);
    match (&ap.provider, custom) {
        (None, true) => f.error(&spec.field("provider"), "a CUSTOM policy needs a provider"),
        (Some(_), false) => f.error(&spec.field("provider"), "provider is only used with action CUSTOM"),
        _ => {}
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let path = spec.field("rules").index(i);
        for (j, from) in rule.from.iter().enumerate() {
            let fpath = path.field("from").index(j).field("source");
            let Some(s) = &from.source else {
                f.error(&fpath, "required field is missing");
                continue;
            };
            for (field, values) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
            ] {
                wildcards(f, &fpath.field(field), values);
            }
            for (field, values) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, v) in values.iter().enumerate() {
                    if !is_ip_or_cidr(v) {
                        f.error(&fpath.field(field).index(k), format!("{v:?} is not an IP address or CIDR block"));
                    }
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let tpath = path.field("to").index(j).field("operation");
            let Some(op) = &to.operation else {
                f.error(&tpath, "required field is missing");
                continue;
            };
            for (field, values) in [("hosts", &op.hosts), ("notHosts", &op.not_hosts)] {
                wildcards(f, &tpath.field(field), values);
            }
            for (field, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, p) in values.iter().enumerate() {
                    auth_path(f, &tpath.field(field).index(k), p);
                }
            }
            for (field, values) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, p) in values.iter().enumerate() {
                    if !p.parse::<u32>().is_ok_and(port_ok) {
                        f.error(&tpath.field(field).index(k), format!("{p:?} is not a port number 1..65535"));
                    }
                }
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            condition(f, &path.field("when").index(j), cond);
        }
    }
    if let Some(sel) = &ap.selector {
        selector_labels(f, &spec.field("selector").field("matchLabels"), &sel.match_labels);
    }
}

/// `*` may stand only at the start or the end of a principal, namespace or host.
fn wildcards(f: &mut Findings, path: &FieldPath, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            f.error(&path.index(i), "must not be empty");
        } else if v != "*" && v.trim_start_matches('*').trim_end_matches('*').contains('*') {
            f.warn(
                &path.index(i),
                format!("{v:?}: \"*\" matches only as a prefix or a suffix; here it matches a literal \"*\""),
            );
        }
    }
}

fn auth_path(f: &mut Findings, path: &FieldPath, p: &str) {
    if p.contains('{') {
        let ok = p.starts_with('/')
            && p.split('/').all(|seg| !seg.contains(['{', '}']) || seg == "{*}" || seg == "{**}")
            && !p.split('/').rev().skip(1).any(|seg| seg == "{**}");
        if !ok {
            f.error(path, format!("{p:?}: path templates support only whole segments {{*}} and a final {{**}}"));
        }
    } else if p != "*" && p.trim_start_matches('*').trim_end_matches('*').contains('*') {
        f.warn(path, format!("{p:?}: \"*\" matches only as a prefix or a suffix; here it matches a literal \"*\" (use {{*}} for one path segment)"));
    }
}

fn condition(f: &mut Findings, path: &FieldPath, c: &Condition) {
    let key = c.key.as_deref().unwrap_or("");
    let known = CONDITION_KEYS.contains(&key)
        || bracketed(key, "request.headers")
        || bracketed(key, "request.auth.claims")
        || key.starts_with("experimental.envoy.filters.");
    if !known {
        f.error(&path.field("key"), format!("{key:?} is not an attribute Istio knows (request.headers[...], source.ip, source.namespace, source.principal, request.auth.claims[...], destination.port, connection.sni, ...)"));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        f.error(path, "a condition needs values or notValues");
    }
    for (field, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        for (i, v) in values.iter().enumerate() {
            let bad = match key {
                "source.ip" | "remote.ip" | "destination.ip" => !is_ip_or_cidr(v),
                "destination.port" => !v.parse::<u32>().is_ok_and(port_ok),
                _ => false,
            };
            if bad {
                f.error(&path.field(field).index(i), format!("{v:?} is not a valid value for {key}"));
            }
        }
    }
}

fn bracketed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

pub(super) fn request_authentication(f: &mut Findings, spec: &FieldPath, ra: &RequestAuthenticationSpec) {
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let path = spec.field("jwtRules").index(i);
        if rule.issuer.as_deref().unwrap_or("").is_empty() {
            f.error(&path.field("issuer"), "required field is missing");
        }
        if let Some(jwks) = &rule.jwks {
            match serde_json::from_str::<serde_json::Value>(jwks) {
                Ok(v) if v.get("keys").is_some_and(serde_json::Value::is_array) => {}
                _ => f.error(&path.field("jwks"), "must be a JSON Web Key Set: a JSON object with a \"keys\" list"),
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            match h.name.as_deref() {
                Some(name) if !name.is_empty() => {
                    header_name(f, &path.field("fromHeaders").index(j).field("name"), name)
                }
                _ => f.error(&path.field("fromHeaders").index(j).field("name"), "required field is missing"),
            }
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cpath = path.field("outputClaimToHeaders").index(j);
            match c.header.as_deref() {
                Some(h) if !h.is_empty() => header_name(f, &cpath.field("header"), h),
                _ => f.error(&cpath.field("header"), "required field is missing"),
            }
            if c.claim.as_deref().unwrap_or("").is_empty() {
                f.error(&cpath.field("claim"), "required field is missing");
            }
        }
        if let Some(h) = &rule.output_payload_to_header {
            header_name(f, &path.field("outputPayloadToHeader"), h);
        }
        f.duration(&path.field("timeout"), rule.timeout.as_deref());
    }
}

pub(super) fn telemetry(f: &mut Findings, spec: &FieldPath, t: &TelemetrySpec) {
    for (i, tr) in t.tracing.iter().enumerate() {
        f.percentage(&spec.field("tracing").index(i).field("randomSamplingPercentage"), tr.random_sampling_percentage);
    }
    let providers = t
        .tracing
        .iter()
        .enumerate()
        .map(|(i, x)| (spec.field("tracing").index(i), &x.providers))
        .chain(t.metrics.iter().enumerate().map(|(i, x)| (spec.field("metrics").index(i), &x.providers)))
        .chain(t.access_logging.iter().enumerate().map(|(i, x)| (spec.field("accessLogging").index(i), &x.providers)));
    for (path, providers) in providers {
        for (j, p) in providers.iter().enumerate() {
            if p.name.as_deref().unwrap_or("").is_empty() {
                f.error(&path.field("providers").index(j).field("name"), "required field is missing");
            }
        }
    }
    for (i, al) in t.access_logging.iter().enumerate() {
        if let Some(filter) = &al.filter
            && filter.expression.as_deref().unwrap_or("").trim().is_empty()
        {
            f.error(&spec.field("accessLogging").index(i).field("filter").field("expression"), "must not be empty");
        }
    }
}
