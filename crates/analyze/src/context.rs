//! Indexes over a set of resources: services by host, gateways by name, subsets by host,
//! workloads by namespace. Built once per analysis.

use std::collections::{BTreeMap, HashMap};

use weft_api::istio::{DestinationRuleSpec, GatewaySpec};
use weft_api::{Resource, Spec};

/// The DNS suffix of in-cluster service names.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";

/// `reviews` in `default` → `reviews.default.svc.cluster.local`; names with a dot, and
/// wildcards, are already fully qualified, as Istio treats them.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.{DOMAIN_SUFFIX}")
    }
}

/// A service port: number and name.
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// Port name, if any.
    pub name: Option<String>,
}

/// Something that runs: a WorkloadEntry, a Pod, or the pod template of a controller.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `Kind/name` of what defines it.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// The indexes analysis runs on.
#[derive(Debug, Default)]
pub struct Context<'a> {
    /// Every resource.
    pub resources: Vec<&'a Resource>,
    /// Services by fully qualified host (ServiceEntry hosts and Kubernetes Services).
    pub services: HashMap<String, Vec<ServicePort>>,
    /// Istio Gateways by `(namespace, name)`.
    pub gateways: HashMap<(String, String), (&'a Resource, &'a GatewaySpec)>,
    /// DestinationRules by fully qualified host.
    pub destination_rules: HashMap<String, Vec<(&'a Resource, &'a DestinationRuleSpec)>>,
    /// Workloads.
    pub workloads: Vec<Workload>,
}

impl<'a> Context<'a> {
    /// Indexes `resources`.
    pub fn new(resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut cx = Context { resources: resources.into_iter().collect(), ..Default::default() };
        for r in cx.resources.clone() {
            let ns = r.namespace();
            match &r.spec {
                Spec::ServiceEntry(se) => {
                    let ports: Vec<ServicePort> = se
                        .ports
                        .iter()
                        .filter_map(|p| Some(ServicePort { number: p.number?, name: p.name.clone() }))
                        .collect();
                    for host in &se.hosts {
                        cx.services.entry(fqdn(host, ns)).or_default().extend(ports.iter().cloned());
                    }
                }
                Spec::Service(svc) => {
                    let ports = svc
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| Some(ServicePort { number: u32::try_from(p.port).ok()?, name: p.name.clone() }))
                        .collect::<Vec<_>>();
                    cx.services.entry(fqdn(r.name(), ns)).or_default().extend(ports);
                }
                Spec::Gateway(gw) => {
                    cx.gateways.insert((ns.to_owned(), r.name().to_owned()), (r, gw));
                }
                Spec::DestinationRule(dr) => {
                    if let Some(host) = &dr.host {
                        cx.destination_rules.entry(fqdn(host, ns)).or_default().push((r, dr));
                    }
                }
                Spec::WorkloadEntry(we) => cx.workloads.push(Workload {
                    name: format!("WorkloadEntry/{}", r.name()),
                    namespace: ns.to_owned(),
                    labels: we
                        .labels
                        .clone()
                        .into_iter()
                        .chain(r.labels().map(|(k, v)| (k.to_owned(), v.to_owned())))
                        .collect(),
                }),
                Spec::Other(raw) => {
                    let labels = match r.kind.as_str() {
                        "Pod" => raw.pointer("/metadata/labels"),
                        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                            raw.pointer("/spec/template/metadata/labels")
                        }
                        _ => None,
                    };
                    if let Some(labels) = labels.and_then(|l| l.as_object()) {
                        cx.workloads.push(Workload {
                            name: format!("{}/{}", r.kind, r.name()),
                            namespace: ns.to_owned(),
                            labels: labels
                                .iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                                .collect(),
                        });
                    }
                }
                _ => {}
            }
        }
        cx
    }

    /// The ports of the service a (fully qualified) host names, if the service is known.
    /// A wildcard ServiceEntry host (`*.example.com`) covers the names below it.
    pub fn service(&self, host: &str) -> Option<&[ServicePort]> {
        if let Some(ports) = self.services.get(host) {
            return Some(ports);
        }
        self.services
            .iter()
            .filter(|(h, _)| h.starts_with('*') && host.ends_with(&h[1..]))
            .max_by_key(|(h, _)| h.len())
            .map(|(_, p)| p.as_slice())
    }

    /// Whether some workload in `namespace` carries all of `labels`.
    pub fn workloads_matching<'s>(
        &'s self,
        namespace: &'s str,
        labels: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s Workload> {
        self.workloads
            .iter()
            .filter(move |w| w.namespace == namespace && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    }

    /// Whether any workload is known in `namespace`.
    pub fn has_workloads_in(&self, namespace: &str) -> bool {
        self.workloads.iter().any(|w| w.namespace == namespace)
    }
}
