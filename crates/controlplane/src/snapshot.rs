//! The mesh configuration one translation works from: valid resources, the service
//! registry built from them, and lookups with Istio's precedence rules.

use std::collections::BTreeMap;

use weft_api::istio::{
    DestinationRuleSpec, GatewaySpec, IstioEgressListener, MtlsMode, PeerAuthenticationSpec, SidecarSpec,
    VirtualServiceSpec,
};
use weft_api::validate::host_covers;
use weft_api::{Resource, Spec};

use crate::node::ProxyIdentity;
use crate::registry::{Registry, Service, resolve_host};

/// The namespace whose Sidecar and policies apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// One version of the mesh's configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every accepted change.
    pub version: u64,
    /// Every valid resource.
    pub resources: Vec<Resource>,
    /// Services and endpoints.
    pub registry: Registry,
    /// Positions in `resources` of each kind translation looks up, so lookups do not
    /// scan every workload and service entry.
    index: KindIndex,
    /// The mesh's trust domain (`cluster.local`): workload identities are
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub trust_domain: String,
    /// The mesh-wide settings.
    pub mesh: std::sync::Arc<crate::mesh::MeshConfig>,
    /// Set when this snapshot differs from the previous one only in where endpoints are.
    pub endpoint_change: Option<EndpointChange>,
    /// What of a sidecar's labels any resource selects on, and whether any Telemetry
    /// configures tracing (see [`Snapshot::outbound_label_keys`]).
    selected: std::sync::Arc<Selected>,
}

/// The label keys resources select workloads by.
#[derive(Debug, Clone, Default)]
struct Selected {
    keys: std::collections::BTreeSet<String>,
    telemetry_traces: bool,
}

impl Selected {
    fn of(resources: &[Resource]) -> Selected {
        let mut selected = Selected::default();
        for r in resources {
            let spec = match &r.spec {
                Spec::VirtualService(s) => serde_json::to_value(s),
                Spec::DestinationRule(s) => serde_json::to_value(s),
                Spec::Gateway(s) => serde_json::to_value(s),
                Spec::Sidecar(s) => serde_json::to_value(s),
                Spec::AuthorizationPolicy(s) => serde_json::to_value(s),
                Spec::PeerAuthentication(s) => serde_json::to_value(s),
                Spec::RequestAuthentication(s) => serde_json::to_value(s),
                Spec::Telemetry(s) => {
                    selected.telemetry_traces |= !s.tracing.is_empty();
                    serde_json::to_value(s)
                }
                Spec::EnvoyFilter(s) => serde_json::to_value(s),
                Spec::WasmPlugin(s) => serde_json::to_value(s),
                Spec::TrafficExtension(s) => serde_json::to_value(s),
                Spec::ProxyConfig(s) => serde_json::to_value(s),
                // Services, their endpoints, namespaces and the Gateway API select
                // endpoints or gateways, not what a sidecar is sent.
                _ => continue,
            };
            if let Ok(spec) = spec {
                selector_keys(&spec, "", &mut selected.keys);
            }
        }
        selected
    }
}

/// Collects the label keys of every selector in a spec: `matchLabels`, `sourceLabels`,
/// a `workloadSelector`'s `labels`, a Gateway's `selector`, and `matchExpressions` keys.
fn selector_keys(value: &serde_json::Value, parent: &str, keys: &mut std::collections::BTreeSet<String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let selects = matches!(key.as_str(), "matchLabels" | "sourceLabels" | "selector")
                    || (key == "labels" && parent == "workloadSelector");
                match v {
                    Value::Object(labels) if selects => {
                        keys.extend(labels.iter().filter(|(_, v)| v.is_string()).map(|(k, _)| k.clone()));
                        selector_keys(v, key, keys);
                    }
                    Value::Array(items) if key == "matchExpressions" => {
                        keys.extend(items.iter().filter_map(|e| e.get("key")?.as_str().map(str::to_owned)));
                    }
                    _ => selector_keys(v, key, keys),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| selector_keys(v, parent, keys)),
        _ => {}
    }
}

/// The labels tracing reads (Istio's canonical service and revision, and `app` for the
/// service name).
const TRACING_LABELS: &[&str] = &[
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/version",
    "service.istio.io/canonical-name",
    "service.istio.io/canonical-revision",
    "version",
];

/// A change that moved endpoints and nothing else: translation may reuse everything but
/// the endpoints of these hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointChange {
    /// The version this snapshot differs from.
    pub since: u64,
    /// Hosts whose endpoints changed.
    pub hosts: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
struct KindIndex {
    virtual_services: Vec<usize>,
    destination_rules: Vec<usize>,
    sidecars: Vec<usize>,
    gateways: Vec<usize>,
    /// Namespace resources, for discovery selectors.
    namespaces: Vec<usize>,
    /// IstioRevisionTags, for resolving a proxy's revision on every push.
    revision_tags: Vec<usize>,
    /// WorkloadEntries by (namespace, name) and by (namespace, address), the first of
    /// each: a proxy finds its own without a scan of every resource.
    workloads_by_name: std::collections::HashMap<(String, String), usize>,
    workloads_by_address: std::collections::HashMap<(String, String), usize>,
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Snapshot {
    /// A snapshot of `resources` (which must have passed validation).
    pub fn new(version: u64, mut resources: Vec<Resource>) -> Self {
        // Field lines serve diagnostics, which validation has given: a snapshot keeps none
        // (at 100 000 WorkloadEntries they would be hundreds of megabytes).
        for r in &mut resources {
            r.lines = Default::default();
        }
        resources.shrink_to_fit();
        let registry = Registry::build(&resources);
        let selected = std::sync::Arc::new(Selected::of(&resources));
        let mut index = KindIndex::default();
        for (i, r) in resources.iter().enumerate() {
            match r.spec {
                Spec::VirtualService(_) => index.virtual_services.push(i),
                Spec::DestinationRule(_) => index.destination_rules.push(i),
                Spec::Sidecar(_) => index.sidecars.push(i),
                Spec::Gateway(_) => index.gateways.push(i),
                Spec::Namespace => index.namespaces.push(i),
                Spec::Other(_) if is_revision_tag(r) => index.revision_tags.push(i),
                Spec::WorkloadEntry(ref we) => {
                    let ns = r.namespace().to_owned();
                    index.workloads_by_name.entry((ns.clone(), r.name().to_owned())).or_insert(i);
                    if let Some(address) = we.address.as_ref().filter(|a| !a.is_empty()) {
                        index.workloads_by_address.entry((ns, address.clone())).or_insert(i);
                    }
                }
                _ => {}
            }
        }
        Snapshot {
            version,
            resources,
            registry,
            index,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            mesh: std::sync::Arc::default(),
            endpoint_change: None,
            selected,
        }
    }

    /// Whether tracing may be configured for some proxy: a mesh default provider, or a
    /// Telemetry with tracing.
    pub fn may_trace(&self) -> bool {
        self.selected.telemetry_traces || self.mesh.default_providers.as_ref().is_some_and(|d| !d.tracing.is_empty())
    }

    /// Whether a sidecar's outbound configuration may depend on its label `key`: some
    /// resource selects workloads by it (a Sidecar, a policy, a Telemetry, a
    /// VirtualService's `sourceLabels`), or tracing may read it.
    pub fn outbound_reads_label(&self, key: &str) -> bool {
        self.selected.keys.contains(key) || (self.may_trace() && TRACING_LABELS.contains(&key))
    }

    /// The snapshot after `previous`, noting whether only endpoints moved.
    pub fn next(previous: &Snapshot, version: u64, resources: Vec<Resource>) -> Self {
        let mut next = Snapshot::new(version, discovered(resources, &previous.mesh));
        next.endpoint_change = endpoint_only_change(previous, &next);
        next.trust_domain = previous.trust_domain.clone();
        next.mesh = previous.mesh.clone();
        next
    }

    fn of_kind<'a>(&'a self, positions: &'a [usize]) -> impl Iterator<Item = &'a Resource> {
        positions.iter().map(|i| &self.resources[*i])
    }

    /// VirtualServices, in file order (the order Istio gives by creation time).
    pub fn virtual_services(&self) -> impl Iterator<Item = (&Resource, &VirtualServiceSpec)> {
        self.of_kind(&self.index.virtual_services).filter_map(|r| match &r.spec {
            Spec::VirtualService(vs) => Some((r, vs.as_ref())),
            _ => None,
        })
    }

    /// The DestinationRule for a service host as seen from `proxy_namespace`: one in the
    /// proxy's namespace first, then the service's, then the root namespace; the most
    /// specific host wins within a namespace.
    pub fn destination_rule(
        &self,
        hostname: &str,
        proxy_namespace: &str,
        service_namespace: &str,
    ) -> Option<&DestinationRuleSpec> {
        let candidates: Vec<(&Resource, &DestinationRuleSpec, String)> = self
            .of_kind(&self.index.destination_rules)
            .filter_map(|r| match &r.spec {
                Spec::DestinationRule(dr) => {
                    let host = resolve_host(dr.host.as_deref().unwrap_or(""), r.namespace());
                    host_covers(&host, hostname).then_some((r, dr.as_ref(), host))
                }
                _ => None,
            })
            .filter(|(r, dr, _)| {
                dr.export_to.is_empty()
                    || dr
                        .export_to
                        .iter()
                        .any(|e| e == "*" || e == proxy_namespace || (e == "." && r.namespace() == proxy_namespace))
            })
            .collect();
        for ns in [proxy_namespace, service_namespace, ROOT_NAMESPACE] {
            let best = candidates
                .iter()
                .filter(|(r, _, _)| r.namespace() == ns)
                .max_by_key(|(_, _, host)| (host == hostname, host.len()));
            if let Some((_, dr, _)) = best {
                return Some(dr);
            }
        }
        None
    }

    /// The Sidecar resource that configures `proxy`: one in its namespace whose selector
    /// matches it, else its namespace's selector-less one, else the root namespace's.
    /// The same snapshot under other mesh-wide settings (its trust domain, if set, wins).
    pub fn with_mesh(self, mesh: crate::mesh::MeshConfig) -> Self {
        // What the discovery selectors leave out is not seen at all.
        let mut next = if mesh.discovery_selectors.is_empty() {
            self
        } else {
            let trust_domain = self.trust_domain.clone();
            let mut s = Snapshot::new(self.version, discovered(self.resources, &mesh));
            s.trust_domain = trust_domain;
            s
        };
        if let Some(td) = &mesh.trust_domain {
            next.trust_domain = td.clone();
        }
        next.mesh = std::sync::Arc::new(mesh);
        next
    }

    /// Whether this control plane sees namespace `ns` (meshConfig's discoverySelectors).
    pub fn sees_namespace(&self, ns: &str) -> bool {
        sees(self.of_kind(&self.index.namespaces), &self.mesh, ns)
    }

    /// The same snapshot in another trust domain.
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = trust_domain.to_owned();
        self
    }

    /// The mutual TLS mode PeerAuthentication sets for a workload's port, with Istio's
    /// precedence: a policy selecting the workload (its `portLevelMtls` entry for the
    /// port first), then its namespace's policy without a selector, then the mesh's (root
    /// namespace); UNSET defers to the next level; PERMISSIVE when nothing says.
    /// Without `labels` (a destination seen from a client), workload policies are not
    /// consulted, as Istio's own best-effort guess for auto mTLS.
    pub fn mtls_mode(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>, port: Option<u32>) -> MtlsMode {
        let policies: Vec<(&Resource, &PeerAuthenticationSpec)> = self
            .resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::PeerAuthentication(pa) => Some((r, pa.as_ref())),
                _ => None,
            })
            .collect();
        let selects = |pa: &PeerAuthenticationSpec| pa.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        let set = |m: Option<&weft_api::istio::MutualTls>| m.and_then(|m| m.mode).filter(|m| *m != MtlsMode::Unset);
        if let Some(labels) = labels {
            let workload = policies.iter().find(|(r, pa)| {
                r.namespace() == namespace
                    && selects(pa)
                    && pa.selector.as_ref().is_some_and(|s| labels_match(&s.match_labels, labels))
            });
            if let Some((_, pa)) = workload {
                let by_port = port.and_then(|p| set(pa.port_level_mtls.get(&p.to_string())));
                if let Some(mode) = by_port.or_else(|| set(pa.mtls.as_ref())) {
                    return mode;
                }
            }
        }
        for ns in [namespace, ROOT_NAMESPACE] {
            let wide = policies.iter().find(|(r, pa)| r.namespace() == ns && !selects(pa));
            if let Some(mode) = wide.and_then(|(_, pa)| set(pa.mtls.as_ref())) {
                return mode;
            }
        }
        MtlsMode::Permissive
    }

    pub fn sidecar_for(&self, proxy: &ProxyIdentity) -> Option<&SidecarSpec> {
        let sidecars: Vec<(&Resource, &SidecarSpec)> = self
            .of_kind(&self.index.sidecars)
            .filter_map(|r| match &r.spec {
                Spec::Sidecar(s) => Some((r, s.as_ref())),
                _ => None,
            })
            .collect();
        let selected = sidecars.iter().find(|(r, s)| {
            r.namespace() == proxy.namespace
                && s.workload_selector
                    .as_ref()
                    .is_some_and(|w| !w.labels.is_empty() && labels_match(&w.labels, &proxy.labels))
        });
        let unselected = |ns: &str| {
            sidecars
                .iter()
                .find(|(r, s)| r.namespace() == ns && s.workload_selector.as_ref().is_none_or(|w| w.labels.is_empty()))
        };
        selected.or_else(|| unselected(&proxy.namespace)).or_else(|| unselected(ROOT_NAMESPACE)).map(|(_, s)| *s)
    }

    /// The revision `name` stands for: the target of the revision tag (sail operator's
    /// `IstioRevisionTag`, `spec.targetRef.name`) of that name, else `name` itself.
    /// Proxies without a revision ask for `default`.
    pub fn resolve_revision<'a>(&'a self, name: &'a str) -> &'a str {
        resolve_revision(self.of_kind(&self.index.revision_tags), name)
    }

    /// The proxy as translation should see it: a sidecar whose node carries no labels or
    /// service account takes them from its WorkloadEntry (matched by name, then by
    /// address, in its namespace), as Istio does for VMs.
    pub fn with_workload(&self, proxy: &ProxyIdentity) -> ProxyIdentity {
        let key = |k: &str| (proxy.namespace.clone(), k.to_owned());
        let at =
            self.index.workloads_by_name.get(&key(&proxy.workload)).or_else(|| {
                (!proxy.ip.is_empty()).then(|| self.index.workloads_by_address.get(&key(&proxy.ip))).flatten()
            });
        let found = at.and_then(|i| {
            let r = &self.resources[*i];
            match &r.spec {
                Spec::WorkloadEntry(we) => Some((r, we.as_ref())),
                _ => None,
            }
        });
        let Some((r, we)) = found else { return proxy.clone() };
        let mut out = proxy.clone();
        if out.labels.is_empty() {
            out.labels = crate::registry::labels_of(r, we);
        }
        if out.service_account.is_empty() {
            out.service_account = we.service_account.clone().unwrap_or_default();
        }
        out
    }

    /// Istio Gateways whose selector matches the proxy's labels.
    pub fn gateways_for(&self, proxy: &ProxyIdentity) -> Vec<(&Resource, &GatewaySpec)> {
        self.of_kind(&self.index.gateways)
            .filter_map(|r| match &r.spec {
                Spec::Gateway(g) if labels_match(&g.selector, &proxy.labels) => Some((r, g.as_ref())),
                _ => None,
            })
            .collect()
    }

    /// Services the proxy may reach through an egress listener (or at all, without one):
    /// exported to its namespace and allowed by the listener's `hosts`.
    pub fn services_for<'a>(&'a self, proxy: &ProxyIdentity, egress: Option<&IstioEgressListener>) -> Vec<&'a Service> {
        self.registry
            .services
            .values()
            .filter(|s| s.visible_from(&proxy.namespace))
            .filter(|s| egress.is_none_or(|e| e.hosts.iter().any(|h| egress_host_allows(h, &proxy.namespace, s))))
            .collect()
    }
}

/// Whether a Sidecar egress host (`namespace/dnsName`) admits a service.
fn egress_host_allows(pattern: &str, proxy_namespace: &str, service: &Service) -> bool {
    let Some((ns, host)) = pattern.split_once('/') else { return false };
    let ns_ok = match ns {
        "*" => true,
        "." => service.namespace == proxy_namespace,
        "~" => false,
        other => service.namespace == other,
    };
    ns_ok && (host == "*" || host_covers(host, &service.hostname))
}

/// Whether two resources are the same but for where a WorkloadEntry's endpoint is:
/// WorkloadEntries compare by name, labels and service account (their labels choose
/// subsets and Sidecars); everything else compares whole.
fn same_but_endpoints(a: &Resource, b: &Resource) -> bool {
    let same_identity =
        a.kind == b.kind && a.namespace() == b.namespace() && a.name() == b.name() && a.meta.labels == b.meta.labels;
    same_identity
        && match (&a.spec, &b.spec) {
            (Spec::WorkloadEntry(x), Spec::WorkloadEntry(y)) => {
                x.labels == y.labels && x.service_account == y.service_account
            }
            (x, y) => x == y,
        }
}

fn endpoint_only_change(previous: &Snapshot, next: &Snapshot) -> Option<EndpointChange> {
    if previous.resources.len() != next.resources.len()
        || previous.registry.services.len() != next.registry.services.len()
    {
        return None;
    }
    if !previous.resources.iter().zip(&next.resources).all(|(a, b)| same_but_endpoints(a, b)) {
        return None;
    }
    let mut hosts = std::collections::BTreeSet::new();
    for (host, service) in &next.registry.services {
        let before = previous.registry.services.get(host)?;
        if before.ports != service.ports {
            return None;
        }
        if before.endpoints != service.endpoints {
            hosts.insert(host.clone());
        }
    }
    Some(EndpointChange { since: previous.version, hosts })
}

fn is_revision_tag(r: &Resource) -> bool {
    r.kind == "IstioRevisionTag" && r.api_version.starts_with("sailoperator.io/")
}

/// The revision tags among `resources` (sail operator's `IstioRevisionTag`): each tag's
/// resource and the revision it points to (`spec.targetRef.name`).
pub fn revision_tags<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
) -> impl Iterator<Item = (&'a Resource, &'a str)> {
    resources.into_iter().filter(|r| is_revision_tag(r)).filter_map(|r| match &r.spec {
        weft_api::Spec::Other(raw) => raw.pointer("/spec/targetRef/name").and_then(|v| v.as_str()).map(|t| (r, t)),
        _ => None,
    })
}

/// The revision `name` stands for among `resources`: the target of the revision tag of
/// that name, else `name` itself.
pub fn resolve_revision<'a>(resources: impl IntoIterator<Item = &'a Resource>, name: &'a str) -> &'a str {
    revision_tags(resources).find(|(r, _)| r.name() == name).map_or(name, |(_, target)| target)
}

/// Kinds that belong to no namespace.
const CLUSTER_SCOPED: &[&str] = &["Namespace", "IstioRevisionTag", "Istio", "IstioRevision", "GatewayClass"];

/// Whether a namespace is among those meshConfig's `discoverySelectors` pick, by the
/// labels of its Namespace resource (and Kubernetes' `kubernetes.io/metadata.name`). The
/// root namespace is always seen.
fn sees<'a>(namespaces: impl IntoIterator<Item = &'a Resource>, mesh: &crate::mesh::MeshConfig, ns: &str) -> bool {
    if mesh.discovery_selectors.is_empty() || ns == ROOT_NAMESPACE {
        return true;
    }
    let mut labels = namespaces
        .into_iter()
        .find(|r| matches!(r.spec, Spec::Namespace) && r.name() == ns)
        .and_then(|r| r.meta.labels.clone())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), ns.to_owned());
    mesh.discovery_selectors.iter().any(|s| s.matches(&labels))
}

/// The resources a control plane with `mesh` sees: those of the namespaces its
/// discovery selectors pick, and the cluster-scoped ones.
fn discovered(resources: Vec<Resource>, mesh: &crate::mesh::MeshConfig) -> Vec<Resource> {
    if mesh.discovery_selectors.is_empty() {
        return resources;
    }
    let namespaces: Vec<&Resource> = resources.iter().filter(|r| matches!(r.spec, Spec::Namespace)).collect();
    let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
    let keep: Vec<bool> = resources
        .iter()
        .map(|r| {
            CLUSTER_SCOPED.contains(&r.kind.as_str())
                || *seen.entry(r.namespace()).or_insert_with(|| sees(namespaces.iter().copied(), mesh, r.namespace()))
        })
        .collect();
    resources.into_iter().zip(keep).filter_map(|(r, k)| k.then_some(r)).collect()
}
