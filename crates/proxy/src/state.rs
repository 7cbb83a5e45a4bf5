//! The accepted xDS resources and the data plane built from them.
//!
//! [`Store`] holds what the control plane sent and the proxy accepted, per type. Each
//! accepted update yields a new immutable [`DataPlane`] that requests read through one
//! atomic pointer: a request sees either the old configuration or the new one, never
//! half of each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::model::cluster::{ClusterSpec, Discovery, Endpoints, compile_cluster, compile_endpoints};
use crate::model::listener::{ListenerSpec, compile_listener};
use crate::model::route::{RouteTable, compile_route_table};
use crate::model::{ConfigError, unpack};
use crate::secrets::Secrets;
use crate::upstream::Upstream;

/// xDS type URLs.
pub mod types {
    /// Listener.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RouteConfiguration.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Cluster.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// ClusterLoadAssignment.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
}

/// The hasher of the maps requests look names up in (every request reads them).
type Fast = foldhash::fast::RandomState;

/// What requests read: every listener, route table and cluster of one configuration.
#[derive(Debug, Default)]
pub struct DataPlane {
    /// Listeners by name (those with something to bind).
    pub listeners: BTreeMap<String, Arc<ListenerSpec>>,
    /// Route tables by name.
    pub routes: HashMap<String, Arc<RouteTable>, Fast>,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<Upstream>, Fast>,
    /// The version of each type this configuration holds.
    pub versions: BTreeMap<&'static str, String>,
}

/// One accepted resource.
#[derive(Debug, Clone)]
pub struct Accepted<T> {
    /// The resource's version (delta) or the response's version (state of the world).
    pub version: String,
    /// As received.
    pub raw: Any,
    /// Compiled.
    pub compiled: T,
}

/// Every accepted resource, by type and name.
#[derive(Debug, Default)]
pub struct Store {
    /// Listeners (None: an api_listener, nothing to bind).
    pub listeners: BTreeMap<String, Accepted<Option<Arc<ListenerSpec>>>>,
    /// Route configurations.
    pub routes: BTreeMap<String, Accepted<Arc<RouteTable>>>,
    /// Clusters.
    pub clusters: BTreeMap<String, Accepted<Arc<ClusterSpec>>>,
    /// Endpoints.
    pub endpoints: BTreeMap<String, Accepted<Arc<Endpoints>>>,
    /// The last accepted version of each type.
    pub versions: BTreeMap<&'static str, String>,
    /// The workload's secrets, which TLS contexts may name.
    pub secrets: Secrets,
}

/// One resource of an update.
#[derive(Debug)]
pub struct Incoming {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The resource.
    pub resource: Any,
}

/// A compiled resource of some type.
enum Compiled {
    Listener(Option<Arc<ListenerSpec>>),
    Route(Arc<RouteTable>),
    Cluster(Arc<ClusterSpec>),
    Endpoints(Arc<Endpoints>),
}

/// The canonical type URL for a known type.
pub fn known_type(type_url: &str) -> Option<&'static str> {
    [types::LISTENER, types::ROUTE, types::CLUSTER, types::ENDPOINT].into_iter().find(|t| *t == type_url)
}

fn compile(type_url: &str, any: &Any, secrets: &Secrets) -> Result<(String, Compiled), ConfigError> {
    let name = |t: &str| t.rsplit('/').next().unwrap_or(t).to_owned();
    match type_url {
        types::LISTENER => {
            let l: Listener = unpack(any, &name(type_url))?;
            Ok((l.name.clone(), Compiled::Listener(compile_listener(&l, secrets)?.map(Arc::new))))
        }
        types::ROUTE => {
            let r: RouteConfiguration = unpack(any, &name(type_url))?;
            Ok((r.name.clone(), Compiled::Route(Arc::new(compile_route_table(&r)?))))
        }
        types::CLUSTER => {
            let c: Cluster = unpack(any, &name(type_url))?;
            Ok((c.name.clone(), Compiled::Cluster(Arc::new(compile_cluster(&c, secrets)?))))
        }
        types::ENDPOINT => {
            let e: ClusterLoadAssignment = unpack(any, &name(type_url))?;
            Ok((e.cluster_name.clone(), Compiled::Endpoints(Arc::new(compile_endpoints(&e)?))))
        }
        other => Err(ConfigError::new(format!("type {other} is not supported"))),
    }
}

impl Store {
    /// An empty store whose TLS contexts use `secrets`.
    pub fn new(secrets: Secrets) -> Store {
        Store { secrets, ..Store::default() }
    }

    /// Applies an update of one type: every resource compiles, or nothing changes.
    /// `replace_all` (state of the world for LDS and CDS) drops resources the update
    /// does not name; `removed` (delta) lists names to drop.
    pub fn apply(
        &mut self,
        type_url: &'static str,
        version: &str,
        resources: Vec<Incoming>,
        removed: &[String],
        replace_all: bool,
    ) -> Result<(), ConfigError> {
        let mut compiled = Vec::with_capacity(resources.len());
        let mut seen = BTreeSet::new();
        let mut unchanged = BTreeSet::new();
        for r in resources {
            // A listener sent again unchanged keeps its compiled form (and its connections).
            if type_url == types::LISTENER
                && let Some(old) = self.listeners.get(&r.name).filter(|old| old.raw == r.resource)
            {
                seen.insert(r.name.clone());
                unchanged.insert(r.name.clone());
                let version = r.version;
                compiled.push((r.name, version, old.raw.clone(), Compiled::Listener(old.compiled.clone())));
                continue;
            }
            let (name, c) = compile(type_url, &r.resource, &self.secrets)?;
            if !r.name.is_empty() && r.name != name {
                return Err(ConfigError::new(format!("resource {} carries a {} named {name}", r.name, type_url)));
            }
            if !seen.insert(name.clone()) {
                return Err(ConfigError::new(format!("duplicate {type_url} {name}")));
            }
            compiled.push((name, r.version, r.resource, c));
        }
        macro_rules! update {
            ($map:expr, $variant:ident) => {{
                if replace_all {
                    $map.retain(|name, _| seen.contains(name));
                }
                for name in removed {
                    $map.remove(name);
                }
                for (name, version, raw, c) in compiled {
                    if let Compiled::$variant(compiled) = c {
                        $map.insert(name, Accepted { version, raw, compiled });
                    }
                }
            }};
        }
        if type_url == types::LISTENER {
            for (name, old) in &self.listeners {
                let replaced = (replace_all && !seen.contains(name))
                    || removed.contains(name)
                    || (seen.contains(name) && !unchanged.contains(name));
                if replaced && let Some(spec) = &old.compiled {
                    spec.retire();
                }
            }
        }
        match type_url {
            types::LISTENER => update!(self.listeners, Listener),
            types::ROUTE => update!(self.routes, Route),
            types::CLUSTER => update!(self.clusters, Cluster),
            _ => update!(self.endpoints, Endpoints),
        }
        self.versions.insert(type_url, version.to_owned());
        Ok(())
    }

    /// The EDS names the accepted clusters need.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| match &c.compiled.discovery {
                Discovery::Eds(name) => Some(name.clone()),
                Discovery::Inline(_) | Discovery::OriginalDst => None,
            })
            .collect()
    }

    /// The RDS names the accepted listeners need.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .filter_map(|l| l.compiled.as_ref())
            .flat_map(|l| l.rds_names().map(str::to_owned))
            .collect()
    }

    /// Builds the data plane, reusing the previous one's upstreams whose cluster did not
    /// change (their pools and outlier state survive). A listener whose routes have not
    /// arrived yet keeps its previous version, as Envoy warms listeners.
    pub fn build(&self, previous: &DataPlane) -> DataPlane {
        let mut clusters = HashMap::with_capacity_and_hasher(self.clusters.len(), Fast::default());
        for (name, c) in &self.clusters {
            let reused = previous.clusters.get(name).filter(|u| *u.spec == *c.compiled).cloned();
            let upstream = reused.unwrap_or_else(|| Arc::new(Upstream::new(c.compiled.clone())));
            let endpoints = match &c.compiled.discovery {
                Discovery::Inline(e) => Some(e.clone()),
                Discovery::Eds(eds) => self.endpoints.get(eds).map(|e| e.compiled.clone()),
                Discovery::OriginalDst => None,
            };
            if let Some(endpoints) = endpoints {
                upstream.set_endpoints_if_changed(&endpoints);
            }
            clusters.insert(name.clone(), upstream);
        }
        let routes: HashMap<String, Arc<RouteTable>, Fast> =
            self.routes.iter().map(|(n, r)| (n.clone(), r.compiled.clone())).collect();
        let mut listeners = BTreeMap::new();
        for (name, l) in &self.listeners {
            let Some(spec) = &l.compiled else { continue };
            if spec.rds_names().all(|r| routes.contains_key(r)) {
                listeners.insert(name.clone(), spec.clone());
            } else if let Some(old) = previous.listeners.get(name) {
                listeners.insert(name.clone(), old.clone());
            }
        }
        DataPlane { listeners, routes, clusters, versions: self.versions.clone() }
    }

    /// The raw resources of a type, for `/config_dump`.
    pub fn raw(&self, type_url: &str) -> Vec<(&str, &str, &Any)> {
        fn list<T>(m: &BTreeMap<String, Accepted<T>>) -> Vec<(&str, &str, &Any)> {
            m.iter().map(|(n, a)| (n.as_str(), a.version.as_str(), &a.raw)).collect()
        }
        match type_url {
            types::LISTENER => list(&self.listeners),
            types::ROUTE => list(&self.routes),
            types::CLUSTER => list(&self.clusters),
            types::ENDPOINT => list(&self.endpoints),
            _ => Vec::new(),
        }
    }
}

/// Encodes a message as an `Any` (for tests and the admin endpoint).
pub fn pack<M: Message + prost::Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}
