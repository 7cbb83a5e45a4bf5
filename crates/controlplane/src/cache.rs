//! Translation results shared by proxies that would get the same configuration.
//!
//! Translation depends only on the snapshot and on the parts of a proxy's identity it
//! reads (role, namespace, labels, address, workload, cluster, requested listener names), so proxies alike
//! in those share one translation per snapshot version: a push to a thousand identical
//! sidecars translates once. Results are encoded once too, with a hash per resource for
//! change detection.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

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
    /// Resources by type URL, then by name; a type an endpoint change leaves alone is
    /// shared with the previous translation, and names are shared between translations.
    pub types: HashMap<&'static str, Arc<Resources>>,
    /// Per type URL: the previous version this was compared with, the names added or
    /// changed since, and the names removed since. Computed once per class, so a push to
    /// many proxies of the class does not compare every resource once per proxy.
    pub changes: HashMap<&'static str, Changes>,
    /// The endpoint sets (EDS names) of each service host, so that an endpoint change
    /// finds what to rebuild without looking at every name.
    pub clusters_of_host: Arc<HashMap<String, Vec<Arc<str>>>>,
}

/// The resources of one type, by name.
pub type Resources = BTreeMap<Arc<str>, Encoded>;

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
    pub fn of(&self, type_url: &str) -> Option<&Resources> {
        self.types.get(type_url).map(|r| &**r)
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
    /// Spans carry it (`istio.cluster_id`).
    cluster_id: String,
    listener_names: Vec<String>,
}

/// One copy of each distinct resource and name, shared by every class's translation:
/// a thousand sidecars that differ only in their own workload hold one encoding of the
/// services they all see, not a thousand.
#[derive(Debug, Default)]
pub struct Interner {
    resources: Mutex<Pool<u64, Weak<Any>>>,
    names: Mutex<Pool<Arc<str>, ()>>,
}

/// A table that forgets what nothing uses any more, once it has doubled since the last look.
#[derive(Debug)]
struct Pool<K, V> {
    entries: HashMap<K, V>,
    swept_at: usize,
}

impl<K, V> Default for Pool<K, V> {
    fn default() -> Self {
        Pool { entries: HashMap::new(), swept_at: 1024 }
    }
}

impl<K, V> Pool<K, V> {
    fn sweep(&mut self, alive: impl Fn(&K, &V) -> bool) {
        if self.entries.len() >= 2 * self.swept_at {
            self.entries.retain(|k, v| alive(k, v));
            self.swept_at = self.entries.len().max(1024);
        }
    }
}

impl Interner {
    /// The resource, encoded once: an identical one already held is shared.
    pub fn encode(&self, any: Any) -> Encoded {
        let mut h = DefaultHasher::new();
        any.type_url.hash(&mut h);
        any.value.hash(&mut h);
        let hash = h.finish();
        let Ok(mut pool) = self.resources.lock() else { return Encoded { hash, any: Arc::new(any) } };
        if let Some(held) = pool.entries.get(&hash).and_then(Weak::upgrade)
            && held.value == any.value
            && held.type_url == any.type_url
        {
            return Encoded { hash, any: held };
        }
        let any = Arc::new(any);
        pool.entries.insert(hash, Arc::downgrade(&any));
        pool.sweep(|_, weak| weak.strong_count() > 0);
        Encoded { hash, any }
    }

    /// The name, allocated once.
    pub fn name(&self, name: &str) -> Arc<str> {
        let Ok(mut pool) = self.names.lock() else { return Arc::from(name) };
        if let Some((held, ())) = pool.entries.get_key_value(name) {
            return held.clone();
        }
        let held: Arc<str> = Arc::from(name);
        pool.entries.insert(held.clone(), ());
        pool.sweep(|name, ()| Arc::strong_count(name) > 1);
        held
    }
}

/// The shared cache.
#[derive(Debug, Default)]
pub struct TranslationCache {
    interner: Interner,
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
            cluster_id: proxy.cluster_id.clone(),
            listener_names: listener_names.to_vec(),
        };
        let key = ClassKey { version: snapshot.version, class: class.clone() };
        let cell = {
            let Ok(mut entries) = self.entries.lock() else {
                return Arc::new(translate_all(&self.interner, snapshot, proxy, listener_names, None));
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
            let t = Arc::new(translate_all(&self.interner, snapshot, proxy, listener_names, previous.as_deref()));
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

fn translate_all(
    interner: &Interner,
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    listener_names: &[String],
    previous: Option<&Translation>,
) -> Translation {
    let reusable = previous.filter(|p| snapshot.endpoint_change.as_ref().is_some_and(|c| c.since == p.version));
    if let (Some(previous), Some(change)) = (reusable, snapshot.endpoint_change.as_ref()) {
        // Only endpoints moved: share everything else, rebuild the moved hosts' endpoints;
        // what changed is known without comparing every resource.
        let mut types = previous.types.clone();
        let mut changes: HashMap<&'static str, Changes> =
            types.keys().map(|t| (*t, Changes { since: previous.version, ..Changes::default() })).collect();
        let proxy = snapshot.with_workload(proxy);
        if let Some(eds) = types.get_mut(type_url::ENDPOINT) {
            let moved: Vec<Arc<str>> =
                change.hosts.iter().filter_map(|h| previous.clusters_of_host.get(h)).flatten().cloned().collect();
            let eds = Arc::make_mut(eds);
            let eds_changes = changes.entry(type_url::ENDPOINT).or_default();
            for name in moved {
                match translate::endpoints_of_cluster(snapshot, &proxy, &name) {
                    Some(cla) => {
                        let encoded = interner.encode(pack_any(cla));
                        if eds.get(&name).map(|e| e.hash) != Some(encoded.hash) {
                            eds_changes.updated.push(name.to_string());
                        }
                        eds.insert(name, encoded);
                    }
                    None => {
                        eds.remove(&name);
                        eds_changes.removed.push(name.to_string());
                    }
                }
            }
        }
        let clusters_of_host = previous.clusters_of_host.clone();
        return Translation { version: snapshot.version, types, changes, clusters_of_host };
    }
    let r = translate::resources_for(snapshot, proxy, listener_names);
    let named = |items: Vec<(String, Any)>| -> Arc<Resources> {
        Arc::new(items.into_iter().map(|(name, any)| (interner.name(&name), interner.encode(any))).collect())
    };
    let mut types: HashMap<&'static str, Arc<Resources>> = HashMap::new();
    types.insert(type_url::CLUSTER, named(r.clusters.into_iter().map(|c| (c.name.clone(), pack_any(c))).collect()));
    types.insert(
        type_url::ENDPOINT,
        named(r.endpoints.into_iter().map(|c| (c.cluster_name.clone(), pack_any(c))).collect()),
    );
    types.insert(type_url::LISTENER, named(r.listeners.into_iter().map(|l| (l.name.clone(), pack_any(l))).collect()));
    types.insert(type_url::ROUTE, named(r.routes.into_iter().map(|rc| (rc.name.clone(), pack_any(rc))).collect()));
    let mut clusters_of_host: HashMap<String, Vec<Arc<str>>> = HashMap::new();
    for name in types.get(type_url::ENDPOINT).into_iter().flat_map(|eds| eds.keys()) {
        if let Some((_, _, host)) = translate::parse_cluster_name(name) {
            clusters_of_host.entry(host.to_owned()).or_default().push(name.clone());
        }
    }
    let mut changes = HashMap::new();
    if let Some(previous) = previous {
        for (t, now) in &types {
            let before = previous.types.get(t);
            let updated = now
                .iter()
                .filter(|(n, e)| before.and_then(|b| b.get(*n)).map(|b| b.hash) != Some(e.hash))
                .map(|(n, _)| n.to_string())
                .collect();
            let removed = before
                .into_iter()
                .flat_map(|b| b.keys())
                .filter(|n| !now.contains_key(*n))
                .map(|n| n.to_string())
                .collect();
            changes.insert(*t, Changes { since: previous.version, updated, removed });
        }
    }
    Translation { version: snapshot.version, types, changes, clusters_of_host: Arc::new(clusters_of_host) }
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

    #[tokio::test]
    async fn sidecars_of_different_workloads_share_one_encoding_of_what_they_both_see() {
        let snapshot = Snapshot::new(1, resources(MESH));
        let cache = TranslationCache::default();
        let mut one = proxy(Role::Sidecar, &[]);
        one.workload = "one".into();
        let mut two = one.clone();
        two.workload = "two".into();
        let (a, b) = (cache.get(&snapshot, &one, &[]).await, cache.get(&snapshot, &two, &[]).await);
        assert!(!Arc::ptr_eq(&a, &b), "two workloads are two classes");
        let clusters = |t: &Translation| t.of(type_url::CLUSTER).cloned().unwrap_or_default();
        let (ca, cb) = (clusters(&a), clusters(&b));
        assert!(!ca.is_empty());
        for (name, e) in &ca {
            let other = cb.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(Arc::ptr_eq(&e.any, &other.any), "{name} is encoded twice");
            let (ka, kb) = (ca.get_key_value(name).map(|k| k.0.clone()), cb.get_key_value(name).map(|k| k.0.clone()));
            assert!(ka.zip(kb).is_some_and(|(x, y)| Arc::ptr_eq(&x, &y)), "{name} is allocated twice");
        }
    }

    #[test]
    fn incremental_translation_equals_full_translation_and_names_only_the_moved_endpoints() {
        let first = Snapshot::new(1, resources(MESH));
        let moved = Snapshot::next(&first, 2, resources(&MESH.replace("10.0.0.1", "10.0.0.2")));
        let before = translate_all(&Interner::default(), &first, &proxy(Role::Sidecar, &[]), &[], None);
        let incremental = translate_all(&Interner::default(), &moved, &proxy(Role::Sidecar, &[]), &[], Some(&before));
        let full = translate_all(
            &Interner::default(),
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
