//! Checks across networking resources: references (IST0101), mesh host conflicts
//! (IST0109), port selectors (IST0112), unreachable rules (IST0130/IST0131), hosts
//! missing from gateways (IST0132), conflicting gateways (IST0145), and server
//! certificate verification (IST0128/IST0129).

use std::collections::{BTreeMap, HashMap};

use weft_api::diag::codes;
use weft_api::istio::{
    ClientTlsMode, ClientTlsSettings, Destination, GatewaySpec, HttpMatchRequest, VirtualServiceSpec,
};
use weft_api::validate::host_covers;
use weft_api::{Diagnostic, FieldPath, Resource, Spec};

use crate::context::{Context, fqdn};

/// Runs every networking check.
pub fn check(cx: &Context, out: &mut Vec<Diagnostic>) {
    for r in &cx.resources {
        match &r.spec {
            Spec::VirtualService(vs) => virtual_service(cx, r, vs, out),
            Spec::DestinationRule(dr) => {
                let spec = FieldPath::root().field("spec");
                let host = dr.host.as_deref().unwrap_or("");
                if let Some(tp) = &dr.traffic_policy {
                    let path = spec.field("trafficPolicy");
                    cert_verification(r, host, &path.field("tls"), tp.tls.as_ref(), None, out);
                    for (i, p) in tp.port_level_settings.iter().enumerate() {
                        cert_verification(
                            r,
                            host,
                            &path.field("portLevelSettings").index(i).field("tls"),
                            p.tls.as_ref(),
                            Some(p.port.as_ref().and_then(|p| p.number).unwrap_or_default()),
                            out,
                        );
                    }
                }
                for (i, s) in dr.subsets.iter().enumerate() {
                    if let Some(tp) = &s.traffic_policy {
                        cert_verification(
                            r,
                            host,
                            &spec.field("subsets").index(i).field("trafficPolicy").field("tls"),
                            tp.tls.as_ref(),
                            None,
                            out,
                        );
                    }
                }
            }
            _ => {}
        }
    }
    mesh_host_conflicts(cx, out);
    conflicting_gateways(cx, out);
}

fn virtual_service(cx: &Context, r: &Resource, vs: &VirtualServiceSpec, out: &mut Vec<Diagnostic>) {
    let spec = FieldPath::root().field("spec");
    let ns = r.namespace();
    let mut bound_gateways = Vec::new();
    for (i, name) in vs.gateways.iter().enumerate() {
        if name == "mesh" {
            continue;
        }
        let key = gateway_key(name, ns);
        match cx.gateways.get(&key) {
            Some((gr, gw)) => bound_gateways.push((*gr, *gw)),
            None => out.push(r.diagnostic(
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                &spec.field("gateways").index(i),
                format!("Referenced gateway not found: {:?}", format!("{}/{}", key.0, key.1)),
            )),
        }
    }
    let through_gateway = !vs.gateways.is_empty() && vs.gateways.iter().all(|g| g != "mesh");
    let mut destinations: Vec<(FieldPath, &Destination)> = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        let rpath = spec.field("http").index(i);
        for (j, d) in route.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                destinations.push((rpath.field("route").index(j).field("destination"), dest));
            }
        }
        if let Some(m) = &route.mirror {
            destinations.push((rpath.field("mirror"), m));
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                destinations.push((rpath.field("mirrors").index(j).field("destination"), dest));
            }
        }
    }
    for (kind, routes) in [
        ("tcp", vs.tcp.iter().map(|t| &t.route).collect::<Vec<_>>()),
        ("tls", vs.tls.iter().map(|t| &t.route).collect()),
    ] {
        for (i, route) in routes.into_iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    destinations.push((spec.field(kind).index(i).field("route").index(j).field("destination"), dest));
                }
            }
        }
    }
    for (path, dest) in destinations {
        destination(cx, r, &path, dest, through_gateway, out);
    }
    unreachable_rules(r, vs, out);
    for (gr, gw) in bound_gateways {
        for (i, host) in vs.hosts.iter().enumerate() {
            if !gateway_serves(gw, gr.namespace(), ns, host) {
                out.push(r.diagnostic(
                    codes::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                    &spec.field("hosts").index(i),
                    format!("host {host:?} is not served by Gateway {}/{}: requests for it will not reach this VirtualService through that gateway", gr.namespace(), gr.name()),
                ));
            }
        }
    }
}

/// `name` → (this namespace, name); `ns/name` → (ns, name); `name.ns.svc.cluster.local` → (ns, name).
fn gateway_key(name: &str, ns: &str) -> (String, String) {
    if let Some((gns, gname)) = name.split_once('/') {
        return (gns.to_owned(), gname.to_owned());
    }
    let mut labels = name.split('.');
    match (labels.next(), labels.next()) {
        (Some(gname), Some(gns)) => (gns.to_owned(), gname.to_owned()),
        _ => (ns.to_owned(), name.to_owned()),
    }
}

fn gateway_serves(gw: &GatewaySpec, gw_ns: &str, vs_ns: &str, host: &str) -> bool {
    gw.servers.iter().flat_map(|s| &s.hosts).any(|server_host| {
        let (ns, h) = server_host.split_once('/').unwrap_or(("*", server_host));
        let ns_ok = ns == "*" || (ns == "." && gw_ns == vs_ns) || ns == vs_ns;
        ns_ok && (host_covers(h, host) || host_covers(host, h))
    })
}

fn destination(
    cx: &Context,
    r: &Resource,
    path: &FieldPath,
    dest: &Destination,
    through_gateway: bool,
    out: &mut Vec<Diagnostic>,
) {
    let Some(host) = dest.host.as_deref() else { return };
    if host.contains('*') {
        return;
    }
    let full = fqdn(host, r.namespace());
    let Some(ports) = cx.service(&full) else {
        out.push(r.diagnostic(
            codes::REFERENCED_RESOURCE_NOT_FOUND,
            &path.field("host"),
            format!("Referenced host not found: {host:?}"),
        ));
        return;
    };
    if let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) {
        let found = cx
            .destination_rules
            .get(&full)
            .into_iter()
            .flatten()
            .any(|(_, dr)| dr.subsets.iter().any(|s| s.name.as_deref() == Some(subset)));
        if !found {
            out.push(r.diagnostic(
                codes::REFERENCED_RESOURCE_NOT_FOUND,
                &path.field("subset"),
                format!("Referenced host+subset in destinationrule not found: \"{host}+{subset}\""),
            ));
        }
    }
    let distinct: std::collections::BTreeSet<u32> = ports.iter().map(|p| p.number).collect();
    if through_gateway && dest.port.as_ref().and_then(|p| p.number).is_none() && distinct.len() > 1 {
        let list: Vec<String> = distinct.iter().map(u32::to_string).collect();
        out.push(r.diagnostic(
            codes::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
            &path.field("port"),
            format!("This VirtualService routes to a service {host:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate.", list.join(", ")),
        ));
    }
}

fn rule_name(i: usize, name: Option<&str>) -> String {
    name.filter(|n| !n.is_empty()).map_or_else(|| format!("#{i}"), |n| format!("{n:?}"))
}

fn unreachable_rules(r: &Resource, vs: &VirtualServiceSpec, out: &mut Vec<Diagnostic>) {
    let spec = FieldPath::root().field("spec");
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(HttpMatchRequest, usize)> = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        let path = spec.field("http").index(i);
        let name = rule_name(i, route.name.as_deref());
        if let Some(first) = catch_all {
            out.push(r.diagnostic(
                codes::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                &path,
                format!("VirtualService rule {name} not used (rule #{first} has no matches and catches everything; only the last rule can have no matches)"),
            ));
            continue;
        }
        if route.r#match.is_empty() {
            catch_all = Some(i);
            continue;
        }
        let mut fresh = 0;
        for (j, m) in route.r#match.iter().enumerate() {
            let mut key = m.clone();
            key.name = None;
            if let Some((_, earlier)) = seen.iter().find(|(k, _)| *k == key) {
                out.push(r.diagnostic(
                    codes::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                    &path.field("match").index(j),
                    format!("VirtualService rule {name} match #{j} is not used (duplicate match in rule #{earlier})"),
                ));
            } else {
                fresh += 1;
                seen.push((key, i));
            }
        }
        if fresh == 0 {
            out.push(r.diagnostic(
                codes::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                &path,
                format!("VirtualService rule {name} not used (no matches that are not already matched)"),
            ));
        }
    }
}

/// IST0109: two VirtualServices for the mesh gateway with the same host.
fn mesh_host_conflicts(cx: &Context, out: &mut Vec<Diagnostic>) {
    let mut by_host: BTreeMap<String, Vec<(&Resource, usize)>> = BTreeMap::new();
    for r in &cx.resources {
        let Spec::VirtualService(vs) = &r.spec else { continue };
        let mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
        if !mesh {
            continue;
        }
        for (i, host) in vs.hosts.iter().enumerate() {
            by_host.entry(fqdn(host, r.namespace())).or_default().push((r, i));
        }
    }
    for (host, users) in by_host {
        if users.len() < 2 {
            continue;
        }
        let names: Vec<String> = users.iter().map(|(r, _)| format!("{}/{}", r.namespace(), r.name())).collect();
        for (r, i) in &users {
            out.push(r.diagnostic(
                codes::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                &FieldPath::root().field("spec").field("hosts").index(*i),
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            ));
        }
    }
}

/// IST0145: two Gateways selecting the same workloads claim the same port and host.
fn conflicting_gateways(cx: &Context, out: &mut Vec<Diagnostic>) {
    type Claim<'a> = (&'a Resource, usize, String);
    let mut claims: HashMap<(String, u32), Vec<Claim>> = HashMap::new();
    let mut gateways: Vec<_> = cx.gateways.values().collect();
    gateways.sort_by_key(|(r, _)| (r.namespace().to_owned(), r.name().to_owned()));
    for (r, gw) in gateways {
        let selector: Vec<String> = gw.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (i, s) in gw.servers.iter().enumerate() {
            let Some(port) = s.port.as_ref().and_then(|p| p.number) else { continue };
            for host in &s.hosts {
                let bare = host.split_once('/').map_or(host.as_str(), |(_, h)| h).to_owned();
                claims.entry((selector.join(","), port)).or_default().push((r, i, bare));
            }
        }
    }
    let mut keys: Vec<_> = claims.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let list = &claims[&key];
        for (a_idx, (ra, ia, ha)) in list.iter().enumerate() {
            let others: Vec<String> = list
                .iter()
                .enumerate()
                .filter(|(b_idx, (rb, _, hb))| {
                    *b_idx != a_idx && !std::ptr::eq(*ra, *rb) && (host_covers(ha, hb) || host_covers(hb, ha))
                })
                .map(|(_, (rb, _, _))| format!("{}/{}", rb.namespace(), rb.name()))
                .collect();
            if !others.is_empty() {
                out.push(ra.diagnostic(
                    codes::CONFLICTING_GATEWAYS,
                    &FieldPath::root().field("spec").field("servers").index(*ia),
                    format!(
                        "Conflict with gateways {} (workload selector {}, port {}, hosts {ha})",
                        others.join(","),
                        if key.0.is_empty() { "<none>" } else { &key.0 },
                        key.1
                    ),
                ));
            }
        }
    }
}

/// IST0128/IST0129: TLS to an upstream without verifying its certificate.
fn cert_verification(
    r: &Resource,
    host: &str,
    path: &FieldPath,
    tls: Option<&ClientTlsSettings>,
    port: Option<u32>,
    out: &mut Vec<Diagnostic>,
) {
    let Some(tls) = tls else { return };
    let verifies = tls.ca_certificates.as_deref().is_some_and(|c| !c.is_empty())
        || tls.credential_name.is_some()
        || tls.insecure_skip_verify == Some(true);
    if matches!(tls.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)) && !verifies {
        let mode = tls.mode.map(ClientTlsMode::as_str).unwrap_or_default();
        let (code, at_port) = match port {
            Some(n) => (codes::NO_SERVER_CERT_VERIFICATION_PORT_LEVEL, format!(" at port number:{n}")),
            None => (codes::NO_SERVER_CERT_VERIFICATION_DESTINATION_LEVEL, String::new()),
        };
        let message = format!(
            "DestinationRule {} in namespace {} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {host}{at_port}",
            r.name(),
            r.namespace()
        );
        out.push(r.diagnostic(code, &path.field("caCertificates"), message));
    }
}
