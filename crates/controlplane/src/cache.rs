//! Translation results shared by proxies that would get the same configuration.
//!
//! A proxy's configuration is translated in two halves (see [`Half`]). The outbound half
//! depends only on what [`translate::outbound_identity`] keeps of a proxy (role,
//! namespace, labels, capture mode, cluster id, SDS), so the replicas of a workload share
//! one translation per snapshot version: an endpoint change seen by a thousand sidecars
//! is translated once per label set. The inbound half is the workload's own and small.
//! Results are encoded once too, with a hash per resource for change detection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use tokio::sync::OnceCell;

use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;
use crate::translate::{self, Half, type_url};

/// One encoded resource and its content hash.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The resource, packed; shared by every translation that has it.
    pub any: Arc<Any>,
    /// Hash of the encoded bytes.
    pub hash: u64,
}

/// The resources of one type, by name.
pub type Resources = BTreeMap<Arc<str>, Encoded>;

/// The resources of one type in both halves of a translation, outbound first; a name in
/// both is the outbound one.
pub type Maps = [Option<Arc<Resources>>; 2];

/// Everything one proxy is sent: its two halves, each shared with the proxies alike in
/// what that half reads.
#[derive(Debug, Default)]
pub struct Translation {
    outbound: Arc<Part>,
    inbound: Arc<Part>,
}

impl Translation {
    /// The resources of one type.
    pub fn of(&self, type_url: &str) -> View<'_> {
        View {
            parts: [self.outbound.types.get(type_url).map(|r| &**r), self.inbound.types.get(type_url).map(|r| &**r)],
        }
    }

    /// The size of every resource, encoded.
    pub fn bytes(&self) -> usize {
        self.outbound.bytes + self.inbound.bytes
    }

    /// The resource maps of one type, one per half, to be held beyond this translation
    /// (what a stream last sent, see [`crate::held::Held`]).
    pub fn maps(&self, type_url: &str) -> Maps {
        [self.outbound.types.get(type_url).cloned(), self.inbound.types.get(type_url).cloned()]
    }

    /// What changed in one type since the snapshot version both halves were last
    /// translated at; `None` when they were not compared with the same one.
    pub fn changes(&self, type_url: &str) -> Option<ChangesView<'_>> {
        let outbound = self.outbound.changes.get(type_url)?;
        let inbound = self.inbound.changes.get(type_url)?;
        (outbound.since == inbound.since).then_some(ChangesView {
            since: outbound.since,
            parts: [outbound, inbound],
            now: self.of(type_url),
        })
    }
}

/// The resources of one type in both halves of a translation (their names are distinct).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    parts: [Option<&'a Resources>; 2],
}

impl<'a> View<'a> {
    /// Every resource: the outbound half's, then the inbound half's, each in name order.
    /// A name in both (a Sidecar ingress and egress listener on the same address and
    /// port) is the outbound one, once.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Arc<str>, &'a Encoded)> + use<'a> {
        let [outbound, inbound] = self.parts;
        let shadowed = move |name: &str| outbound.is_some_and(|o| o.contains_key(name));
        outbound.into_iter().flatten().chain(inbound.into_iter().flatten().filter(move |(n, _)| !shadowed(n)))
    }

    /// The resource of that name, with the shared name.
    pub fn get_key_value(&self, name: &str) -> Option<(&'a Arc<str>, &'a Encoded)> {
        self.parts.into_iter().flatten().find_map(|r| r.get_key_value(name))
    }

    /// The resource of that name.
    pub fn get(&self, name: &str) -> Option<&'a Encoded> {
        self.get_key_value(name).map(|(_, e)| e)
    }

    /// Whether there is a resource of that name.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get_key_value(name).is_some()
    }

    /// How many resources.
    pub fn len(&self) -> usize {
        let [outbound, inbound] = self.parts;
        let shadowed = |name: &str| outbound.is_some_and(|o| o.contains_key(name));
        outbound.map_or(0, BTreeMap::len) + inbound.map_or(0, |i| i.keys().filter(|n| !shadowed(n)).count())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What changed in one type, in both halves.
#[derive(Debug, Clone, Copy)]
pub struct ChangesView<'a> {
    /// The snapshot version compared with.
    pub since: u64,
    parts: [&'a Changes; 2],
    /// The resources now, both halves as one.
    now: View<'a>,
}

impl<'a> ChangesView<'a> {
    /// Names added or changed. A name one half removed that the other still has (a
    /// Sidecar ingress and egress listener on one address and port) changed.
    pub fn updated(&self) -> impl Iterator<Item = &'a String> + use<'a> {
        let now = self.now;
        let still = self.parts.into_iter().flat_map(|c| &c.removed).filter(move |n| now.contains_key(n));
        self.parts.into_iter().flat_map(|c| &c.updated).chain(still)
    }

    /// Names removed from both halves.
    pub fn removed(&self) -> impl Iterator<Item = &'a String> + use<'a> {
        let now = self.now;
        self.parts.into_iter().flat_map(|c| &c.removed).filter(move |n| !now.contains_key(n))
    }

    /// Whether these are the changes from `maps`: the very maps, not only their version
    /// (a proxy whose labels changed moved to another class, whose changes are relative
    /// to that class's previous maps).
    pub fn are_from(&self, maps: &Maps) -> bool {
        self.parts.iter().zip(maps).all(|(c, m)| match (&c.from, m) {
            (Some(from), Some(m)) => std::ptr::eq(from.as_ptr(), Arc::as_ptr(m)),
            (from, m) => from.is_none() && m.is_none(),
        })
    }
}

/// Every resource of one half of a class's configuration, by type URL, then by name, and
/// what changed since the class's previous translation.
#[derive(Debug, Default)]
struct Part {
    /// The snapshot version translated.
    version: u64,
    /// Resources by type URL, then by name; a type an endpoint change leaves alone is
    /// shared with the previous translation, and names are shared between translations.
    types: HashMap<&'static str, Arc<Resources>>,
    /// Per type URL: the previous version this was compared with, the names added or
    /// changed since, and the names removed since. Computed once per class, so a push to
    /// many proxies of the class does not compare every resource once per proxy.
    changes: HashMap<&'static str, Changes>,
    /// The endpoint sets (EDS names) of each service host, so that an endpoint change
    /// finds what to rebuild without looking at every name.
    clusters_of_host: Arc<HostClusters>,
    /// The size of every resource, encoded (as of the last full translation).
    bytes: usize,
    /// For a captured proxy's inbound half: the hosts with an endpoint that is the
    /// workload, whose endpoint changes can change what it serves.
    own_hosts: Arc<BTreeSet<String>>,
}

/// The endpoint sets (EDS names) of each service host.
type HostClusters = HashMap<String, Vec<Arc<str>>>;

/// An endpoint map and its [`HostClusters`], both weak: the entry lives no longer than
/// the classes that use them.
type IndexOf = (Weak<Resources>, Weak<HostClusters>);

/// The size of every resource of these types, encoded.
fn size(types: &HashMap<&'static str, Arc<Resources>>) -> usize {
    types.values().flat_map(|r| r.values()).map(|e| e.any.value.len()).sum()
}

/// What changed in one type between two translations of a class.
#[derive(Debug, Clone, Default)]
struct Changes {
    /// The snapshot version compared with.
    since: u64,
    /// The map compared with, if any: weak, yet its address stays its own while this
    /// is held, so a map at that address is that map.
    from: Option<Weak<Resources>>,
    /// Names added or changed.
    updated: Vec<String>,
    /// Names removed.
    removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    version: u64,
    class: Arc<Class>,
}

/// What one half's translation reads: the proxy as that half sees it, and, for
/// proxyless clients, the listener names they asked for. Hashed once, when made.
#[derive(Debug)]
struct Class {
    hash: u64,
    half: Half,
    proxy: ProxyIdentity,
    listener_names: Vec<String>,
}

impl Class {
    fn new(half: Half, proxy: ProxyIdentity, listener_names: Vec<String>) -> Arc<Class> {
        let mut h = DefaultHasher::new();
        (half, &proxy, &listener_names).hash(&mut h);
        Arc::new(Class { hash: h.finish(), half, proxy, listener_names })
    }
}

impl Hash for Class {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Class {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.half == other.half
            && self.listener_names == other.listener_names
            && self.proxy == other.proxy
    }
}

impl Eq for Class {}

/// The two classes of one proxy, kept by its stream: while the snapshot sees the proxy
/// the same way, the next push looks its halves up without building them again.
#[derive(Debug)]
pub struct Classes {
    /// The proxy as the snapshot saw it (labels from its WorkloadEntry).
    seen: ProxyIdentity,
    listener_names: Vec<String>,
    outbound: Arc<Class>,
    inbound: Arc<Class>,
}

impl Classes {
    fn new(seen: ProxyIdentity, outbound: ProxyIdentity, listener_names: &[String]) -> Classes {
        let outbound = Class::new(Half::Outbound, outbound, listener_names.to_vec());
        // The node id and versions are read by neither half.
        let inbound =
            ProxyIdentity { id: String::new(), revision: String::new(), istio_version: String::new(), ..seen.clone() };
        let inbound = Class::new(Half::Inbound, inbound, Vec::new());
        Classes { seen, listener_names: listener_names.to_vec(), outbound, inbound }
    }
}

/// One copy of each distinct resource and name, shared by every class's translation:
/// a thousand sidecars that differ only in their own workload hold one encoding of the
/// services they all see, not a thousand.
#[derive(Debug, Default)]
pub struct Interner {
    resources: Mutex<Pool<u64, Weak<Any>>>,
    names: Mutex<Pool<Arc<str>, ()>>,
    name_sets: Mutex<Pool<u64, Weak<BTreeSet<Arc<str>>>>>,
    /// By the address of the endpoint map they index (which its weak reference keeps).
    host_clusters: Mutex<Pool<usize, IndexOf>>,
    maps: Mutex<Pool<u64, Weak<Resources>>>,
    moved: Mutex<Moved>,
}

/// Endpoint maps rebuilt for one endpoint change, by the map they were rebuilt from: the
/// classes that shared a map before the change share its successor, built once.
#[derive(Debug, Default)]
struct Moved {
    version: u64,
    done: HashMap<MovedKey, (Arc<Resources>, Arc<Resources>, Changes)>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MovedKey {
    /// The map rebuilt from (kept alive by the entry, so the address stays its own).
    from: usize,
    since: u64,
    /// Endpoints read the namespace's DestinationRules.
    namespace: String,
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

    /// The map, held once: classes whose resources of a type are the same share them.
    fn map(&self, map: Resources) -> Arc<Resources> {
        let mut h = DefaultHasher::new();
        for (name, e) in &map {
            name.hash(&mut h);
            e.hash.hash(&mut h);
        }
        let digest = h.finish();
        let same = |held: &Resources| {
            held.len() == map.len() && held.iter().zip(&map).all(|((a, x), (b, y))| x.hash == y.hash && a == b)
        };
        let Ok(mut pool) = self.maps.lock() else { return Arc::new(map) };
        if let Some(held) = pool.entries.get(&digest).and_then(Weak::upgrade)
            && same(&held)
        {
            return held;
        }
        let map = Arc::new(map);
        pool.entries.insert(digest, Arc::downgrade(&map));
        pool.sweep(|_, weak| weak.strong_count() > 0);
        map
    }

    /// The endpoint map `from` after the change of `version`, built by `rebuild` once for
    /// every class that held `from`, with what changed.
    fn moved(
        &self,
        version: u64,
        key: MovedKey,
        from: &Arc<Resources>,
        rebuild: impl FnOnce() -> (Resources, Changes),
    ) -> (Arc<Resources>, Changes) {
        if let Ok(mut moved) = self.moved.lock() {
            if moved.version != version {
                *moved = Moved { version, done: HashMap::new() };
            }
            if let Some((_, next, changes)) = moved.done.get(&key) {
                return (next.clone(), changes.clone());
            }
        }
        // Built without the lock: two classes may build the same map at once, and the
        // first one kept is the one shared.
        let (map, changes) = rebuild();
        let next = Arc::new(map);
        let Ok(mut moved) = self.moved.lock() else { return (next, changes) };
        if moved.version != version {
            return (next, changes);
        }
        let (_, next, changes) = moved.done.entry(key).or_insert_with(|| (from.clone(), next, changes)).clone();
        (next, changes)
    }

    /// Forgets the rebuilt maps of versions before `version`.
    fn forget_moved_before(&self, version: u64) {
        if let Ok(mut moved) = self.moved.lock()
            && moved.version < version
        {
            *moved = Moved::default();
        }
    }

    /// The endpoint sets of each host in `eds`, indexed once per map: the classes that
    /// share an endpoint map share its index.
    fn clusters_of_host(&self, eds: &Arc<Resources>) -> Arc<HostClusters> {
        let key = Arc::as_ptr(eds) as usize;
        if let Ok(pool) = self.host_clusters.lock()
            && let Some((map, index)) = pool.entries.get(&key)
            && map.strong_count() > 0
            && let Some(index) = index.upgrade()
        {
            return index;
        }
        let mut index = HostClusters::new();
        for name in eds.keys() {
            if let Some((_, _, host)) = translate::parse_cluster_name(name) {
                index.entry(host.to_owned()).or_default().push(name.clone());
            }
        }
        let index = Arc::new(index);
        if let Ok(mut pool) = self.host_clusters.lock() {
            pool.entries.insert(key, (Arc::downgrade(eds), Arc::downgrade(&index)));
            pool.sweep(|_, (map, index)| map.strong_count() > 0 && index.strong_count() > 0);
        }
        index
    }

    /// The set of names, held once: the proxies of a class subscribe to the same ones.
    pub fn names(&self, set: BTreeSet<Arc<str>>) -> Arc<BTreeSet<Arc<str>>> {
        let mut h = DefaultHasher::new();
        set.hash(&mut h);
        let digest = h.finish();
        let Ok(mut pool) = self.name_sets.lock() else { return Arc::new(set) };
        if let Some(held) = pool.entries.get(&digest).and_then(Weak::upgrade)
            && *held == set
        {
            return held;
        }
        let set = Arc::new(set);
        pool.entries.insert(digest, Arc::downgrade(&set));
        pool.sweep(|_, weak| weak.strong_count() > 0);
        set
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

/// Translations in progress or done, by class and version.
#[derive(Debug, Default)]
struct Entries {
    parts: HashMap<PartKey, Arc<OnceCell<Arc<Part>>>>,
    /// The newest version asked for: older ones are never asked for again.
    newest: u64,
}

/// The shared cache.
#[derive(Debug, Default)]
pub struct TranslationCache {
    interner: Interner,
    entries: Mutex<Entries>,
    /// The newest translation of each class, to compute the next one's changes against.
    latest: Mutex<HashMap<Arc<Class>, Arc<Part>>>,
}

impl TranslationCache {
    /// The translation for `proxy`: each half computed at most once per class and version.
    pub async fn get(&self, snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String]) -> Arc<Translation> {
        let classes = Self::classes(snapshot, proxy, listener_names, None);
        self.translation(snapshot, &classes).await
    }

    /// The classes of `proxy` in `snapshot`: `previous` again if the snapshot sees the
    /// proxy as it did.
    pub fn classes(
        snapshot: &Snapshot,
        proxy: &ProxyIdentity,
        listener_names: &[String],
        previous: Option<Arc<Classes>>,
    ) -> Arc<Classes> {
        let seen = snapshot.with_workload(proxy);
        // What the outbound half reads of the proxy depends on the snapshot too (the
        // labels it selects on).
        let outbound = translate::outbound_identity(snapshot, &seen);
        match previous {
            Some(p) if p.seen == seen && p.listener_names == listener_names && p.outbound.proxy == outbound => p,
            _ => Arc::new(Classes::new(seen, outbound, listener_names)),
        }
    }

    /// The translation of a proxy of these classes.
    pub async fn translation(&self, snapshot: &Snapshot, classes: &Classes) -> Arc<Translation> {
        let outbound = self.part(snapshot, classes.outbound.clone()).await;
        let inbound = self.part(snapshot, classes.inbound.clone()).await;
        Arc::new(Translation { outbound, inbound })
    }

    /// Names held once, for whoever keeps names of resources.
    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    async fn part(&self, snapshot: &Snapshot, class: Arc<Class>) -> Arc<Part> {
        let key = PartKey { version: snapshot.version, class };
        let cell = {
            let Ok(mut entries) = self.entries.lock() else {
                return Arc::new(translate_part(&self.interner, snapshot, &key.class, None));
            };
            // Older versions are never asked for again once a newer one is (the one before
            // stays while streams finish pushing it).
            if snapshot.version > entries.newest {
                entries.newest = snapshot.version;
                entries.parts.retain(|k, _| k.version + 1 >= snapshot.version);
                self.interner.forget_moved_before(snapshot.version);
                // A class nothing refers to any more (its proxies gone, no recent
                // translation) has no next translation to compare with its latest.
                if let Ok(mut latest) = self.latest.lock() {
                    latest.retain(|class, _| Arc::strong_count(class) > 1);
                }
            }
            entries.parts.entry(key.clone()).or_default().clone()
        };
        let class = key.class;
        cell.get_or_init(|| async {
            let previous = self.latest.lock().ok().and_then(|l| l.get(&class).cloned());
            let previous = previous.filter(|p| p.version < snapshot.version);
            let t = Arc::new(translate_part(&self.interner, snapshot, &class, previous.as_deref()));
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

fn translate_part(interner: &Interner, snapshot: &Snapshot, class: &Class, previous: Option<&Part>) -> Part {
    let reusable = previous.filter(|p| snapshot.endpoint_change.as_ref().is_some_and(|c| c.since == p.version));
    if let (Some(previous), Some(change)) = (reusable, snapshot.endpoint_change.as_ref()) {
        // Only endpoints moved: share everything else, rebuild the moved hosts' endpoints;
        // what changed is known without comparing every resource.
        let mut types = previous.types.clone();
        let mut changes: HashMap<&'static str, Changes> = types
            .iter()
            .map(|(t, m)| {
                (*t, Changes { since: previous.version, from: Some(Arc::downgrade(m)), ..Changes::default() })
            })
            .collect();
        // Inbound listeners and clusters follow endpoints only under capture (the
        // workload is also known by its address), and only its own services' endpoints.
        let own = |host: &String| {
            previous.own_hosts.contains(host)
                || snapshot
                    .registry
                    .services
                    .get(host)
                    .is_some_and(|s| s.endpoints.iter().any(|e| translate::is_own(&class.proxy, s, e)))
        };
        let inbound_moves =
            class.half == Half::Inbound && translate::captured(&class.proxy) && change.hosts.iter().any(own);
        if !inbound_moves && let Some(from) = types.get(type_url::ENDPOINT).cloned() {
            let key = MovedKey {
                from: Arc::as_ptr(&from) as usize,
                since: previous.version,
                namespace: class.proxy.namespace.clone(),
            };
            let (eds, eds_changes) = interner.moved(snapshot.version, key, &from, || {
                let mut eds = (*from).clone();
                let mut eds_changes =
                    Changes { since: previous.version, from: Some(Arc::downgrade(&from)), ..Changes::default() };
                let moved = change.hosts.iter().filter_map(|h| previous.clusters_of_host.get(h)).flatten();
                for name in moved {
                    match translate::endpoints_of_cluster(snapshot, &class.proxy, name) {
                        Some(cla) => {
                            let encoded = interner.encode(pack_any(cla));
                            if eds.get(name).map(|e| e.hash) != Some(encoded.hash) {
                                eds_changes.updated.push(name.to_string());
                            }
                            eds.insert(name.clone(), encoded);
                        }
                        None => {
                            eds.remove(name);
                            eds_changes.removed.push(name.to_string());
                        }
                    }
                }
                (eds, eds_changes)
            });
            types.insert(type_url::ENDPOINT, eds);
            changes.insert(type_url::ENDPOINT, eds_changes);
            let clusters_of_host = previous.clusters_of_host.clone();
            // Moved endpoints barely change the size: the throttle's weight needs no recount.
            let (bytes, own_hosts) = (previous.bytes, previous.own_hosts.clone());
            return Part { version: snapshot.version, types, changes, clusters_of_host, bytes, own_hosts };
        }
    }
    let r = translate::half_for(snapshot, &class.proxy, &class.listener_names, class.half);
    let named = |items: Vec<(String, Any)>| -> Arc<Resources> {
        interner.map(items.into_iter().map(|(name, any)| (interner.name(&name), interner.encode(any))).collect())
    };
    let mut types: HashMap<&'static str, Arc<Resources>> = HashMap::new();
    types.insert(type_url::CLUSTER, named(r.clusters.into_iter().map(|c| (c.name.clone(), pack_any(c))).collect()));
    types.insert(
        type_url::ENDPOINT,
        named(r.endpoints.into_iter().map(|c| (c.cluster_name.clone(), pack_any(c))).collect()),
    );
    types.insert(type_url::LISTENER, named(r.listeners.into_iter().map(|l| (l.name.clone(), pack_any(l))).collect()));
    types.insert(type_url::ROUTE, named(r.routes.into_iter().map(|rc| (rc.name.clone(), pack_any(rc))).collect()));
    let clusters_of_host = types.get(type_url::ENDPOINT).map(|eds| interner.clusters_of_host(eds)).unwrap_or_default();
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
            changes.insert(*t, Changes { since: previous.version, from: before.map(Arc::downgrade), updated, removed });
        }
    }
    let bytes = size(&types);
    let own_hosts = if class.half == Half::Inbound && translate::captured(&class.proxy) {
        let services = snapshot.registry.services.iter();
        services
            .filter(|(_, s)| s.endpoints.iter().any(|e| translate::is_own(&class.proxy, s, e)))
            .map(|(h, _)| h.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    Part { version: snapshot.version, types, changes, clusters_of_host, bytes, own_hosts: Arc::new(own_hosts) }
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

    /// What a translation holds of one type: names and content hashes.
    fn held(t: &Translation, type_url: &str) -> Vec<(String, u64)> {
        t.of(type_url).iter().map(|(n, e)| (n.to_string(), e.hash)).collect()
    }

    /// The same from a direct translation.
    fn translated(r: &translate::Resources, type_url: &str) -> Vec<(String, u64)> {
        let named: Vec<(String, Any)> = match type_url {
            type_url::CLUSTER => r.clusters.iter().map(|c| (c.name.clone(), pack_any(c.clone()))).collect(),
            type_url::ENDPOINT => r.endpoints.iter().map(|c| (c.cluster_name.clone(), pack_any(c.clone()))).collect(),
            type_url::LISTENER => r.listeners.iter().map(|l| (l.name.clone(), pack_any(l.clone()))).collect(),
            _ => r.routes.iter().map(|rc| (rc.name.clone(), pack_any(rc.clone()))).collect(),
        };
        let interner = Interner::default();
        let mut out: Vec<(String, u64)> = named.into_iter().map(|(n, any)| (n, interner.encode(any).hash)).collect();
        out.sort();
        out
    }

    const SIDECAR: &str = "
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 127.0.0.1:8080}]
  egress: [{port: {number: 9080, protocol: HTTP, name: http}, hosts: [./*]}]
";

    #[tokio::test]
    async fn replicas_share_the_outbound_half_and_keep_their_own_inbound_half() {
        let snapshot = Snapshot::new(1, resources(&format!("{MESH}{SIDECAR}")));
        let cache = TranslationCache::default();
        let replica = |name: &str, ip: &str| {
            let mut p = proxy(Role::Sidecar, &[("app", "reviews"), ("version", "v1")]);
            (p.workload, p.ip, p.service_account) = (name.into(), ip.into(), format!("sa-{name}"));
            p
        };
        let (one, two) = (replica("reviews-v1-a", "127.0.0.21"), replica("reviews-v1-b", "127.0.0.22"));
        let (a, b) = (cache.get(&snapshot, &one, &[]).await, cache.get(&snapshot, &two, &[]).await);
        assert!(Arc::ptr_eq(&a.outbound, &b.outbound), "replicas translate the outbound half once");
        assert!(!Arc::ptr_eq(&a.inbound, &b.inbound), "each replica has its own inbound half");
        for (p, t) in [(&one, &a), (&two, &b)] {
            let direct = translate::resources_for(&snapshot, p, &[]);
            for type_url in type_url::PUSH_ORDER {
                let mut cached = held(t, type_url);
                cached.sort();
                assert_eq!(cached, translated(&direct, type_url), "{} {type_url}", p.workload);
            }
        }
        let listeners =
            |t: &Translation| t.of(type_url::LISTENER).iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        assert_eq!(listeners(&a), ["127.0.0.1_9080", "127.0.0.21_9080"]);
        assert_eq!(listeners(&b), ["127.0.0.1_9080", "127.0.0.22_9080"]);
    }

    /// A route for the callers labelled `app: one`.
    const BY_SOURCE: &str = "
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-for-one}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: one}}]
    route: [{destination: {host: reviews, subset: v1}}]
";

    /// Tracing for every workload (a Telemetry in the root namespace).
    const TRACED: &str = "
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 10}]
";

    #[tokio::test]
    async fn the_outbound_half_tells_workloads_apart_only_by_what_translation_reads_of_them() {
        let mut one = proxy(Role::Sidecar, &[("app", "one"), ("pod-template-hash", "5f7c")]);
        one.workload = "one".into();
        let mut two = proxy(Role::Sidecar, &[("app", "two"), ("pod-template-hash", "9d2b")]);
        two.workload = "two".into();
        // Nothing selects on these labels and nothing traces: one translation for both.
        let snapshot = Snapshot::new(1, resources(MESH));
        let cache = TranslationCache::default();
        let (a, b) = (cache.get(&snapshot, &one, &[]).await, cache.get(&snapshot, &two, &[]).await);
        assert!(Arc::ptr_eq(&a.outbound, &b.outbound), "no resource tells the two apart");
        // A VirtualService routing by `app` does.
        let routed = Snapshot::new(1, resources(&format!("{MESH}{BY_SOURCE}")));
        let (a, b) = (cache.get(&routed, &one, &[]).await, cache.get(&routed, &two, &[]).await);
        assert!(!Arc::ptr_eq(&a.outbound, &b.outbound), "a route matches the source's app label");
        // So does tracing, which names the service after `app`; what is the same in both
        // is still encoded once.
        let snapshot = Snapshot::new(1, resources(&format!("{MESH}{TRACED}")));
        let (a, b) = (cache.get(&snapshot, &one, &[]).await, cache.get(&snapshot, &two, &[]).await);
        assert!(!Arc::ptr_eq(&a.outbound, &b.outbound), "tracing names the service after the app label");
        let (ca, cb) = (a.of(type_url::CLUSTER), b.of(type_url::CLUSTER));
        assert!(!ca.is_empty());
        for (name, e) in ca.iter() {
            let (other_name, other) = cb.get_key_value(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(Arc::ptr_eq(&e.any, &other.any), "{name} is encoded twice");
            assert!(Arc::ptr_eq(name, other_name), "{name} is allocated twice");
        }
    }

    /// `p`'s translation before and after reviews-v1 moves from 10.0.0.1 to 10.0.0.2 in
    /// `mesh`, the second one incremental; asserts it equals a full translation.
    async fn across_a_move(mesh: &str, p: &ProxyIdentity) -> [Arc<Translation>; 2] {
        let moved_mesh = mesh.replace("10.0.0.1", "10.0.0.2");
        let first = Snapshot::new(1, resources(mesh));
        let moved = Snapshot::next(&first, 2, resources(&moved_mesh));
        let cache = TranslationCache::default();
        let before = cache.get(&first, p, &[]).await;
        let incremental = cache.get(&moved, p, &[]).await;
        let full = TranslationCache::default().get(&Snapshot::new(2, resources(&moved_mesh)), p, &[]).await;
        for t in type_url::PUSH_ORDER {
            assert_eq!(held(&incremental, t), held(&full, t), "{t}");
        }
        [before, incremental]
    }

    #[tokio::test]
    async fn a_captured_workload_follows_its_own_endpoints_across_endpoint_changes() {
        // Known by its address only: when its WorkloadEntry moves away, the port it
        // served is no longer captured inbound for it.
        let mut p = proxy(Role::Sidecar, &[("app", "reviews")]);
        (p.ip, p.interception_mode) = ("10.0.0.1".into(), "REDIRECT".into());
        let [before, incremental] = across_a_move(MESH, &p).await;
        let clusters = |t: &Translation| {
            t.of(type_url::CLUSTER)
                .iter()
                .filter(|(n, _)| n.starts_with("inbound|"))
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!((clusters(&before), clusters(&incremental)), (vec!["inbound|9080||".to_owned()], vec![]));
    }

    #[tokio::test]
    async fn a_name_in_both_halves_is_sent_once() {
        // The default egress bind is 127.0.0.1, and ingress listeners bind to the proxy's
        // address: a proxy at 127.0.0.1 gets both on 127.0.0.1:9080.
        let snapshot = Snapshot::new(1, resources(&format!("{MESH}{SIDECAR}")));
        let mut p = proxy(Role::Sidecar, &[("app", "ratings")]);
        p.ip = "127.0.0.1".into();
        let t = TranslationCache::default().get(&snapshot, &p, &[]).await;
        let listeners = t.of(type_url::LISTENER);
        let names: Vec<String> = listeners.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!((names, listeners.len()), (vec!["127.0.0.1_9080".to_owned()], 1));
    }

    #[tokio::test]
    async fn the_classes_of_proxies_gone_are_forgotten() {
        let first = Snapshot::new(1, resources(MESH));
        let cache = TranslationCache::default();
        let mut gone = proxy(Role::Sidecar, &[("app", "gone")]);
        gone.workload = "gone".into();
        gone.namespace = "elsewhere".into();
        let staying = proxy(Role::Sidecar, &[("app", "ratings")]);
        let _ = cache.get(&first, &gone, &[]).await;
        let kept = TranslationCache::classes(&first, &staying, &[], None);
        let _ = cache.translation(&first, &kept).await;
        let latest = |cache: &TranslationCache| cache.latest.lock().map(|l| l.len()).unwrap_or_default();
        assert_eq!(latest(&cache), 4, "two halves of two proxies");
        // Two versions on, only the proxy still connected (holding its classes) is known.
        let mut snapshot = first;
        for version in 2..=3 {
            snapshot = Snapshot::next(&snapshot, version, resources(MESH));
            let _ = cache.translation(&snapshot, &kept).await;
        }
        assert_eq!(latest(&cache), 2);
    }

    #[tokio::test]
    async fn incremental_translation_equals_full_translation_and_names_only_the_moved_endpoints() {
        let p = proxy(Role::Sidecar, &[("app", "ratings")]);
        let [_, incremental] = across_a_move(&format!("{MESH}{SIDECAR}"), &p).await;
        let changes = |t: &str| incremental.changes(t).map(|c| (c.since, c.updated().cloned().collect::<Vec<_>>()));
        assert_eq!(
            changes(type_url::ENDPOINT),
            Some((
                1,
                vec![
                    "outbound|9080|v1|reviews.default.svc.cluster.local".to_owned(),
                    "outbound|9080||reviews.default.svc.cluster.local".to_owned()
                ]
            ))
        );
        for t in [type_url::CLUSTER, type_url::LISTENER, type_url::ROUTE] {
            assert_eq!(changes(t), Some((1, Vec::new())), "{t}");
        }
    }
}
