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

/// Every resource of one proxy class, by type URL, then by name.
pub type Translation = HashMap<&'static str, BTreeMap<String, Encoded>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    version: u64,
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
}

impl TranslationCache {
    /// The translation for `proxy`, computed at most once per class and version.
    pub async fn get(&self, snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String]) -> Arc<Translation> {
        let key = ClassKey {
            version: snapshot.version,
            role: proxy.role,
            namespace: proxy.namespace.clone(),
            labels: proxy.labels.clone(),
            ip: proxy.ip.clone(),
            listener_names: listener_names.to_vec(),
        };
        let cell = {
            let Ok(mut entries) = self.entries.lock() else {
                return Arc::new(translate_all(snapshot, proxy, listener_names));
            };
            // Older versions are never asked for again once a newer one is.
            if !entries.contains_key(&key) {
                entries.retain(|k, _| k.version + 1 >= snapshot.version);
            }
            entries.entry(key).or_default().clone()
        };
        cell.get_or_init(|| async { Arc::new(translate_all(snapshot, proxy, listener_names)) }).await.clone()
    }
}

fn encode(any: Any) -> Encoded {
    let mut h = DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    Encoded { hash: h.finish(), any }
}

fn translate_all(snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String]) -> Translation {
    let r = translate::resources_for(snapshot, proxy, listener_names);
    let mut out: Translation = HashMap::new();
    out.insert(type_url::CLUSTER, r.clusters.into_iter().map(|c| (c.name.clone(), encode(pack_any(c)))).collect());
    out.insert(
        type_url::ENDPOINT,
        r.endpoints.into_iter().map(|c| (c.cluster_name.clone(), encode(pack_any(c)))).collect(),
    );
    out.insert(type_url::LISTENER, r.listeners.into_iter().map(|l| (l.name.clone(), encode(pack_any(l)))).collect());
    out.insert(type_url::ROUTE, r.routes.into_iter().map(|rc| (rc.name.clone(), encode(pack_any(rc)))).collect());
    out
}
