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
    /// The resource, packed.
    pub any: Any,
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
    Encoded { hash: h.finish(), any }
}

fn translate_all(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    listener_names: &[String],
    previous: Option<&Translation>,
) -> Translation {
    let r = translate::resources_for(snapshot, proxy, listener_names);
    let mut types: HashMap<&'static str, BTreeMap<String, Encoded>> = HashMap::new();
    types.insert(type_url::CLUSTER, r.clusters.into_iter().map(|c| (c.name.clone(), encode(pack_any(c)))).collect());
    types.insert(
        type_url::ENDPOINT,
        r.endpoints.into_iter().map(|c| (c.cluster_name.clone(), encode(pack_any(c)))).collect(),
    );
    types.insert(type_url::LISTENER, r.listeners.into_iter().map(|l| (l.name.clone(), encode(pack_any(l)))).collect());
    types.insert(type_url::ROUTE, r.routes.into_iter().map(|rc| (rc.name.clone(), encode(pack_any(rc)))).collect());
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
