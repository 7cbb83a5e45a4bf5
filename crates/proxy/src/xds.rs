//! The xDS client: one ADS stream to the control plane, delta (incremental) by default
//! or state of the world. Clusters and listeners are wildcard subscriptions; endpoints
//! and routes are subscribed by name as clusters and listeners ask for them. Every
//! response is ACKed, or NACKed with the reason while the last good configuration stays.
//! The stream reconnects with jittered exponential back-off; traffic never waits for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::model::ConfigError;
use crate::state::{Incoming, known_type, types};
use crate::{NodeInfo, Shared, XdsProtocol};

/// First reconnect delay.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A stream that lived this long resets the back-off.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);
/// Largest xDS message accepted.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// gRPC's INVALID_ARGUMENT, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The control plane's address is not usable.
    #[error("invalid control plane address {0}: {1}")]
    Address(String, String),
    /// No connection (is the control plane running?).
    #[error("cannot connect to the control plane at {0}: {1} (is it running, and is the address right?)")]
    Connect(String, String),
    /// The stream failed.
    #[error("xDS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    /// The control plane closed the stream.
    #[error("the control plane closed the xDS stream")]
    Closed,
}

/// Runs the client until the process ends. When the proxy moves to another control plane
/// the stream is closed and opened at once to the new one; the configuration in use
/// stays until the new control plane's replaces it.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            result = session(&shared) => result,
            () = shared.moved.notified() => {
                shared.stats.xds.connected.store(0, Ordering::Relaxed);
                if let Ok(mut served) = shared.served_revision.lock() {
                    served.clear();
                }
                let to = shared.control_plane.load();
                tracing::info!(control_plane = %to.xds_address, revision = %to.revision, "moving to another control plane");
                backoff = BACKOFF_START;
                continue;
            }
        };
        shared.stats.xds.connected.store(0, Ordering::Relaxed);
        if started.elapsed() > HEALTHY_STREAM {
            backoff = BACKOFF_START;
        }
        match result {
            Ok(()) => {}
            Err(e) => tracing::warn!("{e}; serving the last configuration, reconnecting in {backoff:?}"),
        }
        let jitter = fastrand::u64(..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(shared: &Arc<Shared>) -> Result<(), XdsError> {
    let target = shared.control_plane.load_full();
    let address = &target.xds_address;
    let scheme = if shared.config.xds_mtls { "https" } else { "http" };
    let uri = if address.contains("://") { address.clone() } else { format!("{scheme}://{address}") };
    let mut endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| XdsError::Address(address.clone(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if shared.config.xds_mtls {
        // Mutual TLS with the workload certificate: wait until the CA has issued it.
        let cert = loop {
            if let Some(tls) = shared.identity.current() {
                break tls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cert = &cert.certificate;
        let root = cert.chain.last().cloned().unwrap_or_default();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(root))
            .domain_name(crate::identity::CA_SERVER_NAME)
            .identity(tonic::transport::Identity::from_pem(cert.chain.concat(), cert.key_pem.clone()));
        endpoint = endpoint.tls_config(tls).map_err(|e| XdsError::Address(address.clone(), e.to_string()))?;
    }
    let channel = endpoint.connect().await.map_err(|e| XdsError::Connect(address.clone(), e.to_string()))?;
    let client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    shared.stats.xds.connected.store(1, Ordering::Relaxed);
    shared.stats.xds.streams.fetch_add(1, Ordering::Relaxed);
    tracing::info!(control_plane = %address, protocol = ?shared.config.protocol, "xDS stream open");
    match shared.config.protocol {
        XdsProtocol::Delta => delta(shared, client).await,
        XdsProtocol::StateOfTheWorld => sotw(shared, client).await,
    }
}

/// The node as Istio's proxies describe themselves, with the revision of the control
/// plane it follows now.
fn current_node(shared: &Shared) -> Node {
    let revision = &shared.control_plane.load().revision;
    if *revision == shared.config.node.revision {
        return node(&shared.config.node);
    }
    node(&NodeInfo { revision: revision.clone(), ..shared.config.node.clone() })
}

/// The node as Istio's proxies describe themselves.
pub fn node(info: &NodeInfo) -> Node {
    let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.to_owned())) };
    let mut fields = BTreeMap::new();
    fields.insert("NAMESPACE".to_owned(), text(&info.namespace));
    fields.insert("INTERCEPTION_MODE".to_owned(), text(&info.interception_mode));
    fields.insert("ISTIO_VERSION".to_owned(), text(env!("CARGO_PKG_VERSION")));
    fields.insert("PROXY_TYPE".to_owned(), text("weft"));
    if !info.workload_name.is_empty() {
        fields.insert("WORKLOAD_NAME".to_owned(), text(&info.workload_name));
    }
    if !info.service_account.is_empty() {
        fields.insert("SERVICE_ACCOUNT".to_owned(), text(&info.service_account));
    }
    if !info.cluster_id.is_empty() {
        fields.insert("CLUSTER_ID".to_owned(), text(&info.cluster_id));
    }
    if !info.revision.is_empty() {
        fields.insert("REVISION".to_owned(), text(&info.revision));
    }
    if info.sds {
        fields.insert("SDS".to_owned(), text("true"));
    }
    let labels: HashMap<String, Value> = info.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    fields.insert("LABELS".to_owned(), Value { kind: Some(value::Kind::StructValue(Struct { fields: labels })) });
    Node {
        id: info.id.clone(),
        cluster: info.cluster.clone(),
        metadata: Some(Struct { fields: fields.into_iter().collect() }),
        user_agent_name: "weft".into(),
        ..Default::default()
    }
}

/// Applies an update to the store and publishes the new data plane.
fn apply(
    shared: &Arc<Shared>,
    type_url: &'static str,
    version: &str,
    resources: Vec<Incoming>,
    removed: &[String],
    replace_all: bool,
) -> Result<(), ConfigError> {
    let Ok(mut store) = shared.store.lock() else { return Err(ConfigError::new("internal: store lock poisoned")) };
    let count = resources.len();
    if let Err(e) = store.apply(type_url, version, resources, removed, replace_all) {
        shared.stats.xds.update_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(type_url, version, "rejected an xDS update: {e}");
        return Err(e);
    }
    // Endpoints and routes nobody asks for any more are dropped.
    let (eds, rds) = (store.eds_names(), store.rds_names());
    store.endpoints.retain(|n, _| eds.contains(n));
    store.routes.retain(|n, _| rds.contains(n));
    let data = Arc::new(store.build(&shared.data.load()));
    let ready = store.versions.contains_key(types::CLUSTER)
        && store.versions.contains_key(types::LISTENER)
        && eds.iter().all(|n| store.endpoints.contains_key(n))
        && rds.iter().all(|n| store.routes.contains_key(n));
    drop(store);
    shared.data.store(data.clone());
    shared.stats.xds.update_success.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(type_url, version, resources = count, "applied an xDS update");
    let errors = match shared.listeners.lock() {
        Ok(mut listeners) => listeners.reconcile(shared, &data),
        Err(_) => Vec::new(),
    };
    for e in &errors {
        tracing::error!("{e}");
    }
    if let Ok(mut shown) = shared.bind_errors.lock() {
        *shown = errors.iter().map(ToString::to_string).collect();
    }
    if ready && errors.is_empty() && !shared.ready.swap(true, Ordering::Relaxed) {
        tracing::info!("configuration complete: the proxy is ready");
    }
    match errors.first() {
        Some(e) if type_url == types::LISTENER => Err(ConfigError::new(e.to_string())),
        _ => Ok(()),
    }
}

/// Keeps the revision the control plane says it is (Istio's identifier:
/// `{"Component":..., "ID":..., "Info":{"revision":...}}`).
fn note_control_plane(shared: &Shared, plane: Option<&envoy_types::pb::envoy::config::core::v3::ControlPlane>) {
    let Some(plane) = plane else { return };
    let said: serde_json::Value = serde_json::from_str(&plane.identifier).unwrap_or_default();
    let Some(revision) = said["Info"]["revision"].as_str() else { return };
    if let Ok(mut served) = shared.served_revision.lock()
        && *served != revision
    {
        revision.clone_into(&mut served);
    }
}

fn nack_status(e: &ConfigError) -> Status {
    Status { code: INVALID_ARGUMENT, message: e.to_string(), details: Vec::new() }
}

async fn delta(
    shared: &Arc<Shared>,
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) -> Result<(), XdsError> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut node = Some(current_node(shared));
    let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    // On a reconnect the proxy says what it already has, so nothing is resent needlessly.
    let known = |type_url: &str| -> HashMap<String, String> {
        shared
            .store
            .lock()
            .map(|s| s.raw(type_url).into_iter().map(|(n, v, _)| (n.to_owned(), v.to_owned())).collect())
            .unwrap_or_default()
    };
    let (eds_names, rds_names) = shared.store.lock().map(|s| (s.eds_names(), s.rds_names())).unwrap_or_default();
    let mut initial = Vec::new();
    for type_url in [types::CLUSTER, types::LISTENER] {
        initial.push(DeltaDiscoveryRequest {
            node: node.take(),
            type_url: type_url.into(),
            initial_resource_versions: known(type_url),
            ..Default::default()
        });
    }
    for (type_url, names) in [(types::ENDPOINT, eds_names), (types::ROUTE, rds_names)] {
        if !names.is_empty() {
            initial.push(DeltaDiscoveryRequest {
                type_url: type_url.into(),
                resource_names_subscribe: names.iter().cloned().collect(),
                initial_resource_versions: known(type_url),
                ..Default::default()
            });
            subscribed.insert(type_url, names);
        }
    }
    for r in initial {
        let _ = tx.send(r).await;
    }
    let mut responses = client.delta_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(response) = responses.message().await? {
        let DeltaDiscoveryResponse {
            type_url,
            resources,
            removed_resources,
            nonce,
            system_version_info,
            control_plane,
            ..
        } = response;
        note_control_plane(shared, control_plane.as_ref());
        let result = match known_type(&type_url) {
            None => Err(ConfigError::new(format!("type {type_url} is not supported"))),
            Some(t) => {
                let incoming = resources
                    .into_iter()
                    .map(|r| Incoming { name: r.name, version: r.version, resource: r.resource.unwrap_or_default() })
                    .collect();
                apply(shared, t, &system_version_info, incoming, &removed_resources, false)
            }
        };
        let reply = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce,
            error_detail: result.as_ref().err().map(nack_status),
            ..Default::default()
        };
        if tx.send(reply).await.is_err() {
            return Err(XdsError::Closed);
        }
        for request in subscription_changes(shared, &mut subscribed) {
            let (add, remove) = request.1;
            let _ = tx
                .send(DeltaDiscoveryRequest {
                    type_url: request.0.into(),
                    resource_names_subscribe: add,
                    resource_names_unsubscribe: remove,
                    ..Default::default()
                })
                .await;
        }
    }
    Err(XdsError::Closed)
}

type Changes = Vec<(&'static str, (Vec<String>, Vec<String>))>;

/// EDS and RDS names to subscribe to and unsubscribe from, after the latest update.
fn subscription_changes(shared: &Shared, subscribed: &mut BTreeMap<&'static str, BTreeSet<String>>) -> Changes {
    let Ok(store) = shared.store.lock() else { return Vec::new() };
    let wanted = [(types::ENDPOINT, store.eds_names()), (types::ROUTE, store.rds_names())];
    drop(store);
    let mut out = Vec::new();
    for (type_url, names) in wanted {
        let current = subscribed.entry(type_url).or_default();
        if *current == names {
            continue;
        }
        let add: Vec<String> = names.difference(current).cloned().collect();
        let remove: Vec<String> = current.difference(&names).cloned().collect();
        *current = names;
        out.push((type_url, (add, remove)));
    }
    out
}

async fn sotw(
    shared: &Arc<Shared>,
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) -> Result<(), XdsError> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut node = Some(current_node(shared));
    let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut nonces: HashMap<&'static str, String> = HashMap::new();
    let version_of =
        |t: &str| -> String { shared.store.lock().ok().and_then(|s| s.versions.get(t).cloned()).unwrap_or_default() };
    let (eds_names, rds_names) = shared.store.lock().map(|s| (s.eds_names(), s.rds_names())).unwrap_or_default();
    let mut initial = Vec::new();
    for type_url in [types::CLUSTER, types::LISTENER] {
        initial.push(DiscoveryRequest {
            node: node.take(),
            type_url: type_url.into(),
            version_info: version_of(type_url),
            ..Default::default()
        });
    }
    for (type_url, names) in [(types::ENDPOINT, eds_names), (types::ROUTE, rds_names)] {
        if !names.is_empty() {
            initial.push(DiscoveryRequest {
                type_url: type_url.into(),
                version_info: version_of(type_url),
                resource_names: names.iter().cloned().collect(),
                ..Default::default()
            });
            subscribed.insert(type_url, names);
        }
    }
    for r in initial {
        let _ = tx.send(r).await;
    }
    let mut responses = client.stream_aggregated_resources(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(response) = responses.message().await? {
        let DiscoveryResponse { type_url, resources, version_info, nonce, control_plane, .. } = response;
        note_control_plane(shared, control_plane.as_ref());
        let known = known_type(&type_url);
        let result = match known {
            None => Err(ConfigError::new(format!("type {type_url} is not supported"))),
            Some(t) => {
                let incoming = resources
                    .into_iter()
                    .map(|r| Incoming { name: String::new(), version: version_info.clone(), resource: r })
                    .collect();
                let replace_all = t == types::CLUSTER || t == types::LISTENER;
                apply(shared, t, &version_info, incoming, &[], replace_all)
            }
        };
        if let Some(t) = known {
            nonces.insert(t, nonce.clone());
        }
        let names = known.and_then(|t| subscribed.get(t)).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        let reply = DiscoveryRequest {
            type_url: type_url.clone(),
            version_info: match &result {
                Ok(()) => version_info,
                Err(_) => known.map(version_of).unwrap_or_default(),
            },
            response_nonce: nonce,
            resource_names: names,
            error_detail: result.as_ref().err().map(nack_status),
            ..Default::default()
        };
        if tx.send(reply).await.is_err() {
            return Err(XdsError::Closed);
        }
        for (type_url, _) in subscription_changes(shared, &mut subscribed) {
            let names = subscribed.get(type_url).map(|s| s.iter().cloned().collect()).unwrap_or_default();
            let _ = tx
                .send(DiscoveryRequest {
                    type_url: type_url.into(),
                    version_info: version_of(type_url),
                    response_nonce: nonces.get(type_url).cloned().unwrap_or_default(),
                    resource_names: names,
                    ..Default::default()
                })
                .await;
        }
    }
    Err(XdsError::Closed)
}
