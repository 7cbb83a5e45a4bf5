//! Translation as pure functions: Istio YAML in, Envoy resources out.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, header_matcher, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;

use super::*;
use crate::node::{ProxyIdentity, Role};
use crate::snapshot::Snapshot;
use crate::testing::proxy;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc-admin, protocol: GRPC}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}, locality: eu/west-1/a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 10.0.0.2, labels: {app: reviews, version: v2}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 5, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 4, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: RANDOM}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 12.5}}}
    retries: {attempts: 4, perTryTimeout: 1s, retryOn: gateway-error, backoff: 250ms}
    timeout: 3s
  - route:
    - {destination: {host: reviews, subset: v1, port: {number: 9080}}, weight: 80}
    - {destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.5
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  gateways: [public]
  http:
  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new, redirectCode: 308}
  - route: [{destination: {host: reviews, port: {number: 9080}}}]
"#;

fn snapshot() -> Snapshot {
    let parsed = weft_api::parse_text("mesh.yaml", MESH);
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    Snapshot::new(1, parsed.resources)
}

fn sidecar() -> ProxyIdentity {
    proxy(Role::Sidecar, &[("app", "client")])
}

fn cluster<'a>(r: &'a Resources, name: &str) -> &'a Cluster {
    r.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {:?}", r.clusters.iter().map(|c| &c.name).collect::<Vec<_>>()))
}

fn routes<'a>(rc: &'a RouteConfiguration, vhost: &str) -> &'a [Route] {
    &rc.virtual_hosts.iter().find(|v| v.name == vhost).unwrap_or_else(|| panic!("no virtual host {vhost}")).routes
}

fn hcm(l: &envoy_types::pb::envoy::config::listener::v3::Listener) -> HttpConnectionManager {
    let any = match l.filter_chains.first().and_then(|c| c.filters.first()).and_then(|f| f.config_type.as_ref()) {
        Some(filter::ConfigType::TypedConfig(any)) => any.clone(),
        _ => l.api_listener.as_ref().and_then(|a| a.api_listener.clone()).unwrap_or_default(),
    };
    HttpConnectionManager::decode(any.value.as_slice()).unwrap_or_default()
}

#[test]
fn clusters_are_named_as_istio_names_them_one_per_port_and_subset() {
    let r = resources_for(&snapshot(), &sidecar(), &[]);
    let names: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9090||reviews.default.svc.cluster.local",
            "outbound|9090|v1|reviews.default.svc.cluster.local",
            "outbound|9090|v2|reviews.default.svc.cluster.local",
            "inbound|9080||",
        ]
    );
}

#[test]
fn destination_rule_policies_shape_clusters_with_port_and_subset_overrides() {
    let r = resources_for(&snapshot(), &sidecar(), &[]);
    let base = cluster(&r, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(base.lb_policy, cluster::LbPolicy::LeastRequest as i32);
    assert_eq!(base.connect_timeout.as_ref().map(|d| d.seconds), Some(2));
    let limits = &base.circuit_breakers.as_ref().map(|c| c.thresholds[0]).unwrap_or_default();
    assert_eq!(
        (
            limits.max_connections.map(|v| v.value),
            limits.max_pending_requests.map(|v| v.value),
            limits.max_retries.map(|v| v.value)
        ),
        (Some(10), Some(5), Some(3))
    );
    let od = base.outlier_detection.clone().unwrap_or_default();
    assert_eq!(
        (
            od.consecutive_5xx.map(|v| v.value),
            od.max_ejection_percent.map(|v| v.value),
            od.base_ejection_time.map(|d| d.seconds)
        ),
        (Some(4), Some(50), Some(30))
    );
    assert_eq!(
        cluster(&r, "outbound|9090||reviews.default.svc.cluster.local").lb_policy,
        cluster::LbPolicy::Random as i32,
        "port-level override"
    );
    assert_eq!(
        cluster(&r, "outbound|9080|v2|reviews.default.svc.cluster.local").lb_policy,
        cluster::LbPolicy::RoundRobin as i32,
        "subset override"
    );
    assert_eq!(
        cluster(&r, "outbound|9080|v1|reviews.default.svc.cluster.local").lb_policy,
        cluster::LbPolicy::LeastRequest as i32,
        "subset inherits"
    );
    assert!(
        cluster(&r, "outbound|9090||reviews.default.svc.cluster.local")
            .typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "gRPC ports speak HTTP/2 upstream"
    );
}

#[test]
fn subset_endpoints_are_the_workloads_with_the_subset_labels_on_their_ports() {
    let r = resources_for(&snapshot(), &sidecar(), &[]);
    let addresses = |name: &str| -> Vec<String> {
        let cla = r.endpoints.iter().find(|c| c.cluster_name == name).cloned().unwrap_or_default();
        cla.endpoints
            .iter()
            .flat_map(|l| l.lb_endpoints.iter())
            .filter_map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    Some(crate::debug::address_text(ep.address.as_ref()))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(addresses("outbound|9080|v1|reviews.default.svc.cluster.local"), ["10.0.0.1:9080"]);
    assert_eq!(addresses("outbound|9080|v2|reviews.default.svc.cluster.local"), ["10.0.0.2:8080"]);
    let all = r
        .endpoints
        .iter()
        .find(|c| c.cluster_name == "outbound|9080||reviews.default.svc.cluster.local")
        .cloned()
        .unwrap_or_default();
    assert_eq!(all.endpoints.len(), 2, "one locality group per locality");
    assert!(all.endpoints.iter().all(|l| l.load_balancing_weight.is_some()), "gRPC clients need locality weights");
}

#[test]
fn virtual_service_rules_become_routes_with_matches_weights_retries_and_faults() {
    let r = resources_for(&snapshot(), &sidecar(), &[]);
    let rc = r.routes.iter().find(|rc| rc.name == "9080").unwrap_or_else(|| panic!("no route 9080"));
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .cloned()
        .unwrap_or_default();
    assert!(
        vh.domains.iter().any(|d| d == "reviews")
            && vh.domains.iter().any(|d| d == "reviews.default.svc.cluster.local:9080")
    );
    let rs = routes(rc, "reviews.default.svc.cluster.local:9080");
    assert_eq!(rs.len(), 2);
    let jason = &rs[0];
    assert_eq!(jason.name, "jason");
    let m = jason.r#match.clone().unwrap_or_default();
    assert_eq!(m.headers[0].name, "end-user");
    assert!(
        matches!(&m.headers[0].header_match_specifier, Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) if format!("{s:?}").contains("jason"))
    );
    let Some(route::Action::Route(action)) = &jason.action else { panic!("not a route action") };
    assert_eq!(
        action.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster("outbound|9080|v2|reviews.default.svc.cluster.local".into()))
    );
    assert_eq!(action.timeout.as_ref().map(|d| d.seconds), Some(3));
    let retry = action.retry_policy.clone().unwrap_or_default();
    assert_eq!(
        (retry.retry_on.as_str(), retry.num_retries.map(|n| n.value), retry.per_try_timeout.map(|d| d.seconds)),
        ("gateway-error", Some(4), Some(1))
    );
    assert_eq!(retry.retry_back_off.and_then(|b| b.base_interval).map(|d| d.nanos), Some(250_000_000));
    assert!(jason.typed_per_filter_config.contains_key("envoy.filters.http.fault"));
    let fault = envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::decode(
        jason.typed_per_filter_config["envoy.filters.http.fault"].value.as_slice(),
    )
    .unwrap_or_default();
    assert_eq!(
        fault.abort.and_then(|a| a.percentage).map(|p| p.numerator),
        Some(125_000),
        "12.5% as parts per million"
    );

    let Some(route::Action::Route(split)) = &rs[1].action else { panic!("not a route action") };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else {
        panic!("not weighted")
    };
    let weights: Vec<(String, u32)> =
        w.clusters.iter().map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value))).collect();
    assert_eq!(
        weights,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local".into(), 80),
            ("outbound|9080|v2|reviews.default.svc.cluster.local".into(), 20)
        ]
    );
    let default_retry = split.retry_policy.clone().unwrap_or_default();
    assert_eq!(
        (default_retry.num_retries.map(|n| n.value), default_retry.retriable_status_codes),
        (Some(2), vec![503]),
        "Istio's default retry policy"
    );
    assert_eq!(
        split.timeout.as_ref().map(|d| (d.seconds, d.nanos)),
        Some((0, 0)),
        "no timeout unless one is set, as Istio"
    );
}

#[test]
fn sidecar_listeners_bind_where_the_sidecar_resource_says_and_the_router_is_last() {
    let r = resources_for(&snapshot(), &sidecar(), &[]);
    let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.5_9080", "127.0.0.9_9080"], "egress on its bind, ingress on the proxy's address");
    for l in &r.listeners {
        let filters: Vec<String> = hcm(l).http_filters.iter().map(|f| f.name.clone()).collect();
        assert_eq!(filters.last().map(String::as_str), Some("envoy.filters.http.router"), "{filters:?}");
    }
    let inbound = hcm(&r.listeners[1]);
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = inbound.route_specifier else {
        panic!("inbound routes are inline")
    };
    assert!(format!("{rc:?}").contains("inbound|9080||"));
    let inbound_cluster = cluster(&r, "inbound|9080||");
    assert_eq!(
        inbound_cluster.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32))
    );
    assert!(format!("{:?}", inbound_cluster.load_assignment).contains("8080"), "forwards to defaultEndpoint");
}

#[test]
fn gateways_get_a_listener_per_server_port_and_the_bound_virtual_services() {
    let r = resources_for(&snapshot(), &proxy(Role::Gateway, &[("istio", "ingressgateway")]), &[]);
    assert_eq!(r.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["0.0.0.0_8080"]);
    let rc = r.routes.iter().find(|rc| rc.name == "http.8080").unwrap_or_else(|| panic!("no http.8080"));
    let rs = routes(rc, "shop.example.com:8080");
    assert!(
        matches!(&rs[0].action, Some(route::Action::Redirect(redirect)) if redirect.response_code == 4),
        "308 is PERMANENT_REDIRECT"
    );
    assert!(
        rc.virtual_hosts.iter().all(|v| v.name != "reviews.default.svc.cluster.local:9080"),
        "mesh-only VirtualServices stay off the gateway"
    );
    let none = resources_for(&snapshot(), &proxy(Role::Gateway, &[("istio", "egressgateway")]), &[]);
    assert!(none.listeners.is_empty(), "a gateway no Gateway selects gets no listeners");
}

#[test]
fn proxyless_clients_get_api_listeners_for_the_targets_they_ask_for() {
    let target = "reviews.default.svc.cluster.local:9080".to_owned();
    let r =
        resources_for(&snapshot(), &proxy(Role::Proxyless, &[]), &[target.clone(), "unknown.example.com:80".into()]);
    assert_eq!(r.listeners.len(), 1, "unknown targets get nothing");
    assert_eq!(r.listeners[0].name, target);
    assert!(r.listeners[0].api_listener.is_some());
    let h = hcm(&r.listeners[0]);
    assert!(
        matches!(h.route_specifier, Some(http_connection_manager::RouteSpecifier::Rds(ref rds)) if rds.route_config_name == target)
    );
    let rc = r.routes.iter().find(|rc| rc.name == target).unwrap_or_else(|| panic!("no route for the target"));
    assert!(rc.virtual_hosts[0].domains.contains(&target));
    let Some(route::Action::Route(action)) = &rc.virtual_hosts[0].routes[0].action else { panic!() };
    assert!(
        action.retry_policy.as_ref().is_some_and(|p| p.retry_host_predicate.is_empty()),
        "gRPC clients get no Envoy-only retry predicates"
    );
}

#[test]
fn a_sidecar_without_labels_takes_them_from_its_workload_entry() {
    let yaml = format!(
        "{MESH}---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client-1}}\nspec: {{address: 127.0.0.9, labels: {{app: client}}, serviceAccount: client}}\n"
    );
    let parsed = weft_api::parse_text("mesh.yaml", &yaml);
    let snapshot = Snapshot::new(1, parsed.resources);
    let bare = proxy(Role::Sidecar, &[]);
    let r = resources_for(&snapshot, &bare, &[]);
    assert_eq!(
        r.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["127.0.0.5_9080", "127.0.0.9_9080"],
        "matched by address, so its Sidecar applies"
    );
    assert_eq!(snapshot.with_workload(&bare).service_account, "client");
}
