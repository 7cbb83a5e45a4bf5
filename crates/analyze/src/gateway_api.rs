//! Gateway API references: parent Gateways, backend Services, and the ReferenceGrants
//! that cross-namespace references need.

use weft_api::diag::codes;
use weft_api::{Diagnostic, FieldPath, Resource, Spec};

use crate::context::{Context, fqdn};

/// A reference from a route to a parent or backend.
struct Ref<'a> {
    group: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// A reference and the field it is written in.
type Located<'a> = (FieldPath, Ref<'a>);

/// The parent and backend references of an HTTPRoute or GRPCRoute. The two kinds have
/// the same reference fields in different Rust types, hence a macro.
macro_rules! route_refs {
    ($spec:expr) => {{
        let spec = FieldPath::root().field("spec");
        let parents: Vec<Located> = $spec
            .parent_refs
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| {
                let group = p.group.as_deref().unwrap_or(weft_api::resource::GATEWAY_GROUP);
                let kind = p.kind.as_deref().unwrap_or("Gateway");
                (
                    spec.field("parentRefs").index(i),
                    Ref { group, kind, name: &p.name, namespace: p.namespace.as_deref() },
                )
            })
            .collect();
        let mut backends: Vec<Located> = Vec::new();
        for (i, rule) in $spec.rules.iter().flatten().enumerate() {
            for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
                let (group, kind) = (b.group.as_deref().unwrap_or(""), b.kind.as_deref().unwrap_or("Service"));
                let path = spec.field("rules").index(i).field("backendRefs").index(j);
                backends.push((path, Ref { group, kind, name: &b.name, namespace: b.namespace.as_deref() }));
            }
        }
        (parents, backends)
    }};
}

/// Runs the Gateway API checks.
pub fn check(cx: &Context, out: &mut Vec<Diagnostic>) {
    for r in &cx.resources {
        let (parents, backends) = match &r.spec {
            Spec::HttpRoute(s) => route_refs!(s),
            Spec::GrpcRoute(s) => route_refs!(s),
            _ => continue,
        };
        for (path, p) in parents {
            let ns = p.namespace.unwrap_or(r.namespace());
            let found = match (p.group, p.kind) {
                (weft_api::resource::GATEWAY_GROUP, "Gateway") => cx
                    .resources
                    .iter()
                    .any(|g| matches!(g.spec, Spec::KubeGateway(_)) && g.name() == p.name && g.namespace() == ns),
                ("" | "core", "Service") => cx.service(&fqdn(p.name, ns)).is_some(),
                _ => true,
            };
            if !found {
                out.push(r.diagnostic(
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    &path,
                    format!("Referenced {} not found: \"{ns}/{}\"", p.kind, p.name),
                ));
            }
        }
        for (path, b) in backends {
            let ns = b.namespace.unwrap_or(r.namespace());
            let found = match (b.group, b.kind) {
                ("" | "core", "Service") => cx.service(&fqdn(b.name, ns)).is_some(),
                ("networking.istio.io", "Hostname") => cx.service(b.name).is_some(),
                _ => true,
            };
            if !found {
                out.push(r.diagnostic(
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    &path,
                    format!("Referenced {} not found: \"{ns}/{}\"", b.kind, b.name),
                ));
            } else if ns != r.namespace() && !granted(cx, r, ns, b.kind, b.name) {
                out.push(r.diagnostic(
                    codes::REFERENCED_RESOURCE_NOT_FOUND,
                    &path,
                    format!(
                        "{} {ns}/{} is in another namespace and no ReferenceGrant in {ns} allows {} from {}",
                        b.kind,
                        b.name,
                        r.kind,
                        r.namespace()
                    ),
                ));
            }
        }
    }
}

fn granted(cx: &Context, from: &Resource, to_ns: &str, to_kind: &str, to_name: &str) -> bool {
    cx.resources.iter().filter(|g| g.namespace() == to_ns).any(|g| {
        let Spec::ReferenceGrant(grant) = &g.spec else { return false };
        let from_ok = grant
            .from
            .iter()
            .any(|f| f.kind == from.kind && f.namespace == from.namespace() && f.group == from.group());
        let to_ok = grant.to.iter().any(|t| t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name));
        from_ok && to_ok
    })
}
