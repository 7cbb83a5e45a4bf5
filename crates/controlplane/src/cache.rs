//! Translation results shared by proxies that would get the same configuration.
//!
//! Translation depends only on the snapshot and on the parts of a proxy's identity it
//! reads (role, namespace, labels, address, requested listener names), so proxies alike
//! in those share one translation per snapshot version: a push to a thousand identical
//! sidecars translates once. Results are encoded once too, with a hash per resource for
//! change detection.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::sync::OnceCell;

use crate::node::{ProxyIdentity, Role};
use crate::snapshot::Snapshot;
use crate::translate::{self, type_url};

/// One encoded resource and its content hash.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The resource, packed; shared by every translation that has it.
    pub any: Arc<Any>,
    /// Hash of the encoded bytes.
    pub hash: u64,
}

/// Every resource of one proxy class, by type URL, then by name, and what changed
/// since the class's previous translation.
#[derive(Debug, Default)]
pub struct Translation {
    /// The snapshot version translated.
    pub version: u64,
    /// Resources by type URL, then by name.
    pub types: HashMap<&'static str, BTreeMap<String, Encoded>>,
    /// Per type URL: the previous version this was compared with, the names added or
    /// changed since, and the names removed since. Computed once per class, so a push to
    /// many proxies of the class does not compare every resource once per proxy.
    pub changes: HashMap<&'static str, Changes>,
}

/// What changed in one type between two translations of a class.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The snapshot version compared with.
    pub since: u64,
    /// Names added or changed.
    pub updated: Vec<String>,
    /// Names removed.
    pub removed: Vec<String>,
}

impl Translation {
    /// The resources of one type.
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Encoded>> {
        self.types.get(type_url)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    version: u64,
    class: Class,
}

/// What translation reads of a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Class {
    role: Role,
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: String,
    workload: String,
    service_account: String,
    interception_mode: String,
    sds: bool,
    listener_names: Vec<String>,
}

/// The shared cache.
#[derive(Debug, Default)]
pub struct TranslationCache {
    entries: Mutex<HashMap<ClassKey, Arc<OnceCell<Arc<Translation>>>>>,
    /// The newest translation of each class, to compute the next one's changes against.
    latest: Mutex<HashMap<Class, Arc<Translation>>>,
}

impl TranslationCache {
    /// The translation for `proxy`, computed at most once per class and version.
    pub async fn get(&self, snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String]) -> Arc<Translation> {
        let class = Class {
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            ip: proxy.ip.clone(),
            workload: proxy.workload.clone(),
            service_account: proxy.service_account.clone(),
            interception_mode: proxy.interception_mode.clone(),
            sds: proxy.sds,
            listener_names: listener_names.to_vec(),
        };
        let key = ClassKey { version: snapshot.version, class: class.clone() };
        let cell = {
            let Ok(mut entries) = self.entries.lock() else {
                return Arc::new(translate_all(snapshot, proxy, listener_names, None));
            };
            // Older versions are never asked for again once a newer one is.
            if !entries.contains_key(&key) {
                entries.retain(|k, _| k.version + 1 >= snapshot.version);
            }
            entries.entry(key).or_default().clone()
        };
        cell.get_or_init(|| async {
            let previous = self.latest.lock().ok().and_then(|l| l.get(&class).cloned());
            let previous = previous.filter(|p| p.version < snapshot.version);
            let t = Arc::new(translate_all(snapshot, proxy, listener_names, previous.as_deref()));
            if let Ok(mut latest) = self.latest.lock() {
                let newer = latest.get(&class).is_some_and(|l| l.version > t.version);
                if !newer {
                    latest.insert(class.clone(), t.clone());
                }
            }
            t
        })
        .await
        .clone()
    }
}

fn encode(any: Any) -> Encoded {
    let mut h = DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    Encoded { hash: h.finish(), any: Arc::new(any) }
}

fn translate_all(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    listener_names: &[String],
    previous: Option<&Translation>,
) -> Translation {
    let mut types: HashMap<&'static str, BTreeMap<String, Encoded>> = HashMap::new();
    let reusable = previous.filter(|p| snapshot.endpoint_change.as_ref().is_some_and(|c| c.since == p.version));
    if let (Some(previous), Some(change)) = (reusable, snapshot.endpoint_change.as_ref()) {
        // Only endpoints moved: keep everything else, rebuild the moved hosts' endpoints.
        for (t, resources) in &previous.types {
            types.insert(*t, resources.clone());
        }
        let proxy = snapshot.with_workload(proxy);
        if let Some(eds) = types.get_mut(type_url::ENDPOINT) {
            let moved: Vec<String> = eds
                .keys()
                .filter(|n| translate::parse_cluster_name(n).is_some_and(|(_, _, h)| change.hosts.contains(h)))
                .cloned()
                .collect();
            for name in moved {
                match translate::endpoints_of_cluster(snapshot, &proxy, &name) {
                    Some(cla) => {
                        eds.insert(name, encode(pack_any(cla)));
                    }
                    None => {
                        eds.remove(&name);
                    }
                }
            }
        }
    } else {
        let r = translate::resources_for(snapshot, proxy, listener_names);
        types
            .insert(type_url::CLUSTER, r.clusters.into_iter().map(|c| (c.name.clone(), encode(pack_any(c)))).collect());
        types.insert(
            type_url::ENDPOINT,
            r.endpoints.into_iter().map(|c| (c.cluster_name.clone(), encode(pack_any(c)))).collect(),
        );
        types.insert(
            type_url::LISTENER,
            r.listeners.into_iter().map(|l| (l.name.clone(), encode(pack_any(l)))).collect(),
        );
        types.insert(type_url::ROUTE, r.routes.into_iter().map(|rc| (rc.name.clone(), encode(pack_any(rc)))).collect());
    }
    let mut changes = HashMap::new();
    if let Some(previous) = previous {
        for (t, now) in &types {
            let before = previous.types.get(t);
            let updated = now
                .iter()
                .filter(|(n, e)| before.and_then(|b| b.get(*n)).map(|b| b.hash) != Some(e.hash))
                .map(|(n, _)| n.clone())
                .collect();
            let removed =
                before.into_iter().flat_map(|b| b.keys()).filter(|n| !now.contains_key(*n)).cloned().collect();
            changes.insert(*t, Changes { since: previous.version, updated, removed });
        }
    }
    Translation { version: snapshot.version, types, changes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Role;
    use crate::testing::proxy;

    const MESH: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1}
spec: {address: 10.0.0.9, labels: {app: ratings, version: v1}}
";

    fn resources(yaml: &str) -> Vec<weft_api::Resource> {
        weft_api::parse_text("t.yaml", yaml).resources
    }

    #[test]
    fn a_moved_endpoint_is_an_endpoint_only_change_and_a_relabelled_one_is_not() {
        let first = Snapshot::new(1, resources(MESH));
        let moved = Snapshot::next(&first, 2, resources(&MESH.replace("10.0.0.1", "10.0.0.2")));
        let change = moved.endpoint_change.clone().unwrap_or_else(|| panic!("not endpoint-only"));
        assert_eq!(
            (change.since, change.hosts.into_iter().collect::<Vec<_>>()),
            (1, vec!["reviews.default.svc.cluster.local".to_owned()])
        );
        let relabelled = Snapshot::next(&first, 2, resources(&MESH.replace("version: v1}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: ratings-v1}", "version: v2}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: ratings-v1}")));
        assert_ne!(relabelled.resources.len(), 0);
        assert!(relabelled.endpoint_change.is_none(), "labels choose subsets: not endpoint-only");
    }

    #[test]
    fn incremental_translation_equals_full_translation_and_names_only_the_moved_endpoints() {
        let first = Snapshot::new(1, resources(MESH));
        let moved = Snapshot::next(&first, 2, resources(&MESH.replace("10.0.0.1", "10.0.0.2")));
        let before = translate_all(&first, &proxy(Role::Sidecar, &[]), &[], None);
        let incremental = translate_all(&moved, &proxy(Role::Sidecar, &[]), &[], Some(&before));
        let full = translate_all(
            &Snapshot::new(2, resources(&MESH.replace("10.0.0.1", "10.0.0.2"))),
            &proxy(Role::Sidecar, &[]),
            &[],
            None,
        );
        for t in type_url::PUSH_ORDER {
            let names = |tr: &Translation| tr.types[t].iter().map(|(n, e)| (n.clone(), e.hash)).collect::<Vec<_>>();
            assert_eq!(names(&incremental), names(&full), "{t}");
        }
        let eds = &incremental.changes[type_url::ENDPOINT];
        assert_eq!(
            eds.updated,
            ["outbound|9080|v1|reviews.default.svc.cluster.local", "outbound|9080||reviews.default.svc.cluster.local"]
        );
        assert!(
            incremental.changes[type_url::CLUSTER].updated.is_empty()
                && incremental.changes[type_url::ROUTE].updated.is_empty()
        );
    }
}
