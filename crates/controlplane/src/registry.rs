//! The service registry: which services exist, on which ports, and which endpoints
//! serve them. Built from ServiceEntries (hosts, ports, resolution) and their endpoints,
//! inline or selected WorkloadEntries, exactly as Istio builds it for VMs.

use std::collections::{BTreeMap, HashMap};

use weft_api::istio::{Location, Resolution, ServiceEntrySpec, WorkloadEntrySpec};
use weft_api::{Resource, Spec};

/// The DNS suffix of in-mesh service names.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// `reviews` written in namespace `default` means `reviews.default.svc.cluster.local`;
/// names with a dot or a wildcard are taken as written, as Istio resolves them.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.{DOMAIN_SUFFIX}")
    }
}

/// The protocol of a service port, from its declared protocol or its name's prefix
/// (`http-web`, `grpc`), as Istio selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 if the client speaks it).
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// TLS, routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// Parses Istio's protocol names, falling back to the port name's prefix, then TCP.
    pub fn of(protocol: Option<&str>, name: Option<&str>) -> Self {
        let word =
            protocol.filter(|p| !p.is_empty()).or_else(|| name.map(|n| n.split('-').next().unwrap_or(n))).unwrap_or("");
        match word.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP_PROXY" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "HTTPS" | "TLS" => Protocol::Tls,
            _ => Protocol::Tcp,
        }
    }

    /// Whether requests on this port are routed as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The service port clients call.
    pub number: u32,
    /// The port's name (endpoints may map names to their own port numbers).
    pub name: String,
    /// How traffic on the port is handled.
    pub protocol: Protocol,
    /// The port endpoints listen on, when it differs and no per-endpoint port is given.
    pub target_port: Option<u32>,
}

/// An endpoint's labels, held as a sorted list. Most endpoints carry one or two, for
/// which a `BTreeMap`'s node (over 500 bytes) would be most of the endpoint's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(String, String)]>);

impl Labels {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[i].1)
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every label, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A later value of a key replaces an earlier one.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(items: I) -> Self {
        let mut all: Vec<(String, String)> = items.into_iter().collect();
        // Stable, so that equal keys keep their order and the last one is kept.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(all.len());
        for (k, v) in all {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Labels(out.into_boxed_slice())
    }
}

/// One instance serving a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// IP address (or host name, for DNS resolution).
    pub address: String,
    /// Port numbers by service port name.
    pub ports: BTreeMap<String, u32>,
    /// Labels (subsets select on them).
    pub labels: Labels,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Load-balancing weight (0 means default).
    pub weight: u32,
    /// The service account the workload runs as.
    pub service_account: String,
    /// The network the endpoint is on.
    pub network: String,
    /// The WorkloadEntry this endpoint came from, if any.
    pub workload: Option<String>,
}

impl Endpoint {
    /// The port this endpoint receives `port`'s traffic on.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
    }
}

/// A service: a host and its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The fully qualified host name.
    pub hostname: String,
    /// The namespace of the resource that declared it.
    pub namespace: String,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inside or outside the mesh.
    pub location: Location,
    /// Namespaces the service is visible to (`*` for all, `.` for its own).
    pub export_to: Vec<String>,
    /// Instances.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// Whether a proxy in `namespace` may see this service.
    pub fn visible_from(&self, namespace: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|e| e == "*" || e == namespace || (e == "." && self.namespace == namespace))
    }

    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// All services, by host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    /// Services by fully qualified host.
    pub services: BTreeMap<String, Service>,
}

impl Registry {
    /// Builds the registry from a set of (valid) resources.
    pub fn build(resources: &[Resource]) -> Self {
        let workload_entries = WorkloadIndex::new(resources);
        let mut services = BTreeMap::new();
        for r in resources {
            let Spec::ServiceEntry(se) = &r.spec else { continue };
            let mut endpoints = endpoints_of(r, se, &workload_entries);
            for (i, host) in se.hosts.iter().enumerate() {
                // Each host of the entry has the same endpoints; the last takes them.
                let endpoints = if i + 1 < se.hosts.len() { endpoints.clone() } else { std::mem::take(&mut endpoints) };
                let hostname = resolve_host(host, r.namespace());
                let ports = se
                    .ports
                    .iter()
                    .filter_map(|p| {
                        Some(ServicePort {
                            number: p.number?,
                            name: p.name.clone().unwrap_or_default(),
                            protocol: Protocol::of(p.protocol.as_deref(), p.name.as_deref()),
                            target_port: p.target_port,
                        })
                    })
                    .collect();
                let service = Service {
                    hostname: hostname.clone(),
                    namespace: r.namespace().to_owned(),
                    ports,
                    resolution: se.resolution.unwrap_or(Resolution::None),
                    location: se.location.unwrap_or(Location::MeshExternal),
                    export_to: se.export_to.clone(),
                    endpoints,
                };
                // The first declaration of a host wins, as in Istio (oldest first).
                services.entry(hostname).or_insert(service);
            }
        }
        Registry { services }
    }

    /// The service for a host written in `namespace`.
    pub fn service(&self, host: &str, namespace: &str) -> Option<&Service> {
        self.services.get(&resolve_host(host, namespace))
    }
}

/// WorkloadEntries by namespace and label, so a selector looks at the entries that
/// carry its first label rather than at every entry.
struct WorkloadIndex<'a> {
    entries: Vec<(&'a Resource, &'a WorkloadEntrySpec, Labels)>,
    by_label: HashMap<(&'a str, String, String), Vec<usize>>,
}

impl<'a> WorkloadIndex<'a> {
    fn new(resources: &'a [Resource]) -> Self {
        let mut index = WorkloadIndex { entries: Vec::new(), by_label: HashMap::new() };
        for r in resources {
            let Spec::WorkloadEntry(we) = &r.spec else { continue };
            let labels: Labels = labels_of(r, we).into_iter().collect();
            let i = index.entries.len();
            for (k, v) in labels.iter() {
                index.by_label.entry((r.namespace(), k.to_owned(), v.to_owned())).or_default().push(i);
            }
            index.entries.push((r, we.as_ref(), labels));
        }
        index
    }

    fn selecting(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&(&'a Resource, &'a WorkloadEntrySpec, Labels)> {
        let Some((k, v)) = selector.iter().next() else {
            return self.entries.iter().filter(|(r, _, _)| r.namespace() == namespace).collect();
        };
        let candidates = self.by_label.get(&(namespace, k.clone(), v.clone())).map(Vec::as_slice).unwrap_or_default();
        candidates
            .iter()
            .map(|i| &self.entries[*i])
            .filter(|(_, _, labels)| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .collect()
    }
}

fn endpoints_of(r: &Resource, se: &ServiceEntrySpec, workload_entries: &WorkloadIndex) -> Vec<Endpoint> {
    let inline = se.endpoints.iter().map(|e| endpoint(e, None, e.labels.clone().into_iter().collect()));
    let selected = se
        .workload_selector
        .iter()
        .flat_map(|sel| workload_entries.selecting(r.namespace(), &sel.labels))
        .map(|(wr, we, labels)| endpoint(we, Some(wr.name().to_owned()), labels.clone()));
    inline.chain(selected).collect()
}

/// A WorkloadEntry's labels: its spec labels over its metadata labels.
pub fn labels_of(r: &Resource, we: &WorkloadEntrySpec) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = r.labels().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    labels.extend(we.labels.clone());
    labels
}

/// The endpoint of a WorkloadEntry (or of a ServiceEntry's inline entry), with `labels`.
fn endpoint(we: &WorkloadEntrySpec, workload: Option<String>, labels: Labels) -> Endpoint {
    Endpoint {
        address: we.address.clone().unwrap_or_default(),
        ports: we.ports.clone(),
        labels,
        locality: we.locality.clone().unwrap_or_default(),
        weight: we.weight.unwrap_or(0),
        service_account: we.service_account.clone().unwrap_or_default(),
        network: we.network.clone().unwrap_or_default(),
        workload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str) -> Registry {
        let parsed = weft_api::parse_text("t.yaml", yaml);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        Registry::build(&parsed.resources)
    }

    #[test]
    fn short_names_resolve_in_their_namespace() {
        assert_eq!(resolve_host("reviews", "default"), "reviews.default.svc.cluster.local");
        assert_eq!(resolve_host("reviews.default", "prod"), "reviews.default");
        assert_eq!(resolve_host("*.example.com", "prod"), "*.example.com");
    }

    #[test]
    fn workload_entries_become_endpoints_of_the_services_that_select_them() {
        let reg = registry(
            "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 127.0.10.3, labels: {app: reviews, version: v1}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec: {address: 127.0.10.4, labels: {app: reviews, version: v2}, ports: {http: 9999}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec: {address: 127.0.10.9, labels: {app: reviews}}
",
        );
        let svc = reg.service("reviews", "shop").unwrap_or_else(|| panic!("{reg:?}"));
        assert_eq!(svc.hostname, "reviews.shop.svc.cluster.local");
        assert_eq!(svc.ports[0].protocol, Protocol::Http);
        let eps: Vec<(&str, u32)> =
            svc.endpoints.iter().map(|e| (e.address.as_str(), e.port_for(&svc.ports[0]))).collect();
        assert_eq!(eps, [("127.0.10.3", 8080), ("127.0.10.4", 9999)]);
        assert_eq!(svc.endpoints[0].labels.get("version").map(String::as_str), Some("v1"));
    }

    #[test]
    fn protocol_comes_from_the_declaration_or_the_port_name() {
        assert_eq!(Protocol::of(Some("GRPC"), None), Protocol::Grpc);
        assert_eq!(Protocol::of(None, Some("http-web")), Protocol::Http);
        assert_eq!(Protocol::of(Some(""), Some("grpc")), Protocol::Grpc);
        assert_eq!(Protocol::of(None, Some("db")), Protocol::Tcp);
    }
}
