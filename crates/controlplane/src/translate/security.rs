//! Mutual TLS between sidecars, as Istio configures it.
//!
//! Clients: a DestinationRule `tls.mode: ISTIO_MUTUAL` always originates mutual TLS with
//! the workload certificate; without a `tls` setting, auto mTLS sends it to endpoints
//! labelled `security.istio.io/tlsMode: istio` (those with a sidecar) and plaintext to
//! the rest, through `transport_socket_matches`. The server's certificate must carry
//! the SPIFFE id of one of the destination's service accounts.
//!
//! Servers: each inbound filter chain becomes a TLS chain (certificate required, ALPN
//! `istio*`), a plaintext chain, or both, as PeerAuthentication says for the port
//! (STRICT, DISABLE, PERMISSIVE). Certificates are the SDS secrets `default` and `ROOTCA`,
//! which a proxy only has with a workload identity ([`ProxyIdentity::sds`]): a proxy
//! without one gets plaintext configuration only.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Metadata, TransportSocket, api_config_source,
    config_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, ListenerFilter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsParameters, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher, tls_parameters,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, Struct, Value, value};
use envoy_types::util::pack_any;
use prost::Message;
use weft_api::istio::{ClientTlsMode, ClientTlsSettings, Location, MtlsMode};

use crate::node::ProxyIdentity;
use crate::registry::{Endpoint, Service};
use crate::snapshot::Snapshot;

/// The endpoint label that says a workload has a sidecar (and so accepts mutual TLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The cluster that serves SDS to Envoy (Istio's agent, in the bootstrap).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// The SDS secret holding the operating system's trusted roots, as Istio's agent names it.
pub const SYSTEM_ROOTS: &str = "file-root:system";
/// ALPN a client offers for mesh mutual TLS.
const CLIENT_ALPN: &[&str] = &["istio-peer-exchange", "istio"];
/// ALPN values that mark a connection as mesh mutual TLS.
const MESH_ALPN: &[&str] = &["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// The endpoint metadata `transport_socket_matches` select on.
const SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    let sa = if service_account.is_empty() { "default" } else { service_account };
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

pub(super) fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            // Wait for the secret however long it takes, as Istio does.
            initial_fetch_timeout: Some(Duration::default()),
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: SDS_CLUSTER.to_owned(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }),
    }
}

/// The workload certificate and the mesh root, with `sans` required of the peer, and
/// meshConfig's `meshMTLS` TLS parameters.
fn mesh_common(snapshot: &Snapshot, sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    let tls = snapshot.mesh.mesh_mtls.clone().unwrap_or_default();
    let minimum = match tls.min_protocol_version {
        Some(crate::mesh::TlsVersion::Tls13) => tls_parameters::TlsProtocol::TlSv13,
        _ => tls_parameters::TlsProtocol::TlSv12,
    };
    let matchers = sans
        .iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(san.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: minimum as i32,
            ecdh_curves: tls.ecdh_curves,
            cipher_suites: tls.cipher_suites,
            ..Default::default()
        }),
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

fn tls_socket(context: UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(RawBuffer::default()))),
    }
}

/// Istio's SNI for mesh traffic: `outbound_.9080_.v1_.reviews.default.svc.cluster.local`.
fn mesh_sni(cluster_name: &str) -> String {
    let mut parts = cluster_name.splitn(4, '|');
    let (direction, port, subset, host) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    format!("{direction}_.{port}_.{subset}_.{host}")
}

/// The SPIFFE ids a destination's servers may present: the service accounts of its
/// endpoints (`default` for a sidecar endpoint that names none, as the CA issues it), in
/// the trust domain and in each of its aliases.
fn service_identities(snapshot: &Snapshot, service: &Service) -> Vec<String> {
    let domains: Vec<&str> = std::iter::once(snapshot.trust_domain.as_str())
        .chain(snapshot.mesh.trust_domain_aliases.iter().map(String::as_str))
        .collect();
    let mut ids: Vec<String> = service
        .endpoints
        .iter()
        .filter(|e| !e.service_account.is_empty() || e.labels.contains_key(TLS_MODE_LABEL))
        .flat_map(|e| domains.iter().map(|td| spiffe_id(td, &service.namespace, &e.service_account)))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Mesh mutual TLS on an outbound cluster, as its DestinationRule's `tls` (or its
/// absence, with auto mTLS) asks. SIMPLE and MUTUAL are handled by the caller.
pub(super) fn apply_outbound(
    c: &mut Cluster,
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    service: &Service,
    tls: Option<&ClientTlsSettings>,
) {
    if !proxy.sds {
        return;
    }
    let context = || UpstreamTlsContext {
        common_tls_context: Some(mesh_common(snapshot, &service_identities(snapshot, service), CLIENT_ALPN)),
        sni: mesh_sni(&c.name),
        ..Default::default()
    };
    match tls.and_then(|t| t.mode) {
        Some(ClientTlsMode::IstioMutual) => c.transport_socket = Some(tls_socket(context())),
        Some(_) => {}
        None => {
            // Auto mTLS: only inside the mesh, and not when the destination's namespace
            // (or the mesh) turned mutual TLS off.
            if !snapshot.mesh.auto_mtls()
                || service.location == Location::MeshExternal
                || snapshot.mtls_mode(&service.namespace, None, None) == MtlsMode::Disable
            {
                return;
            }
            let istio = Struct {
                fields: [("tlsMode".to_owned(), Value { kind: Some(value::Kind::StringValue("istio".into())) })]
                    .into_iter()
                    .collect(),
            };
            c.transport_socket_matches = vec![
                cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(istio),
                    transport_socket: Some(tls_socket(context())),
                },
                cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_buffer()),
                },
            ];
        }
    }
}

/// meshConfig's `tlsDefaults` (ECDH curves, cipher suites) on TLS a DestinationRule
/// originates (SIMPLE, MUTUAL); mesh mutual TLS takes `meshMTLS` instead.
pub(super) fn apply_tls_defaults(c: &mut Cluster, snapshot: &Snapshot, tls: Option<&ClientTlsSettings>) {
    let Some(defaults) = &snapshot.mesh.tls_defaults else { return };
    if !matches!(tls.and_then(|t| t.mode), Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)) {
        return;
    }
    let Some(TransportSocket { config_type: Some(transport_socket::ConfigType::TypedConfig(any)), .. }) =
        &mut c.transport_socket
    else {
        return;
    };
    let Ok(mut ctx) = UpstreamTlsContext::decode(any.value.as_slice()) else { return };
    let common = ctx.common_tls_context.get_or_insert_with(Default::default);
    let params = common.tls_params.get_or_insert_with(Default::default);
    params.ecdh_curves = defaults.ecdh_curves.clone();
    params.cipher_suites = defaults.cipher_suites.clone();
    *any = pack_any(ctx);
}

/// The metadata that tells auto mTLS an endpoint has a sidecar.
pub(super) fn endpoint_metadata(endpoint: &Endpoint) -> Option<Metadata> {
    let mode = endpoint.labels.get(TLS_MODE_LABEL)?;
    let fields =
        [("tlsMode".to_owned(), Value { kind: Some(value::Kind::StringValue(mode.clone())) })].into_iter().collect();
    Some(Metadata {
        filter_metadata: [(SOCKET_MATCH.to_owned(), Struct { fields })].into_iter().collect(),
        ..Default::default()
    })
}

/// An inbound filter chain as PeerAuthentication wants it for `port`: mutual TLS only
/// (STRICT), plaintext only (DISABLE), or both (PERMISSIVE), the TLS chain chosen by its
/// `istio` ALPN. HTTP chains forward the client's identity in `x-forwarded-client-cert`.
pub(super) fn inbound_chains(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    port: u32,
    chain: FilterChain,
) -> Vec<FilterChain> {
    let mut chain = with_client_cert_details(chain);
    guard(snapshot, proxy, &mut chain);
    if !proxy.sds {
        return vec![chain];
    }
    let mode = snapshot.mtls_mode(&proxy.namespace, Some(&proxy.labels), Some(port));
    let mut tls = chain.clone();
    let mut m = tls.filter_chain_match.take().unwrap_or_default();
    m.transport_protocol = "tls".into();
    m.application_protocols = MESH_ALPN.iter().map(|a| (*a).to_owned()).collect();
    tls.filter_chain_match = Some(m);
    let http = chain_is_http(&chain);
    let alpn: &[&str] = if http { &["h2", "http/1.1"] } else { &[] };
    let context = DownstreamTlsContext {
        common_tls_context: Some(mesh_common(snapshot, &[], alpn)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    tls.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    });
    if !tls.name.is_empty() {
        tls.name = format!("{}-mtls", tls.name);
    }
    match mode {
        MtlsMode::Strict => vec![tls],
        MtlsMode::Disable => vec![chain],
        MtlsMode::Permissive | MtlsMode::Unset => vec![tls, chain],
    }
}

/// The workload's own policies on a chain it serves: RequestAuthentication's JWT filter
/// first, then AuthorizationPolicy's RBAC filters (HTTP), or RBAC alone (TCP).
pub(super) fn guard(snapshot: &Snapshot, proxy: &ProxyIdentity, chain: &mut FilterChain) {
    super::authz::apply(snapshot, proxy, chain);
    // Inserted in front of the RBAC filters, which read what it validated.
    super::authn::apply(snapshot, proxy, chain);
}

/// The chain for captured connections no port chain takes (undeclared ports, and
/// plaintext to a STRICT port): authorization applies, and under the workload's STRICT
/// mode only mutual TLS is accepted, so nothing plaintext slips past STRICT through it.
pub(super) fn inbound_passthrough(snapshot: &Snapshot, proxy: &ProxyIdentity, mut chain: FilterChain) -> FilterChain {
    guard(snapshot, proxy, &mut chain);
    if proxy.sds && snapshot.mtls_mode(&proxy.namespace, Some(&proxy.labels), None) == MtlsMode::Strict {
        let context = DownstreamTlsContext {
            common_tls_context: Some(mesh_common(snapshot, &[], &[])),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        chain.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
        });
    }
    chain
}

fn chain_is_http(chain: &FilterChain) -> bool {
    chain.filters.iter().any(|f| f.name == super::listener::HCM)
}

/// Istio's inbound connection managers: append the client's certificate details.
fn with_client_cert_details(mut chain: FilterChain) -> FilterChain {
    super::listener::edit_hcm(&mut chain, |hcm| {
        hcm.forward_client_cert_details = http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
        hcm.set_current_client_cert_details = Some(http_connection_manager::SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            dns: true,
            uri: true,
            ..Default::default()
        });
    });
    chain
}

/// Envoy's TLS inspector, which listeners whose chains match on TLS need.
pub(super) fn tls_inspector(chains: &[FilterChain]) -> Option<ListenerFilter> {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    let needed = chains.iter().filter_map(|c| c.filter_chain_match.as_ref()).any(|m: &FilterChainMatch| {
        !m.transport_protocol.is_empty() || !m.application_protocols.is_empty() || !m.server_names.is_empty()
    });
    needed.then(|| ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Role;
    use crate::testing::proxy;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1, serviceAccount: reviews, labels: {security.istio.io/tlsMode: istio}}]
"#;

    fn outbound(mesh: crate::mesh::MeshConfig) -> Cluster {
        let snapshot = Snapshot::new(1, weft_api::parse_text("m.yaml", MESH).resources).with_mesh(mesh);
        let service = &snapshot.registry.services["reviews.default.svc.cluster.local"];
        let mut client = proxy(Role::Sidecar, &[]);
        client.sds = true;
        let mut c = Cluster { name: "outbound|9080||reviews.default.svc.cluster.local".into(), ..Default::default() };
        apply_outbound(&mut c, &snapshot, &client, service, None);
        c
    }

    fn sans(c: &Cluster) -> Vec<String> {
        let Some(ts) = c.transport_socket_matches.first().and_then(|m| m.transport_socket.as_ref()) else {
            return Vec::new();
        };
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else { return Vec::new() };
        let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap_or_default();
        let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
            ctx.common_tls_context.and_then(|c| c.validation_context_type)
        else {
            return Vec::new();
        };
        v.default_validation_context
            .map(|d| d.match_typed_subject_alt_names)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| match m.matcher.and_then(|m| m.match_pattern) {
                Some(string_matcher::MatchPattern::Exact(e)) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn trust_domain_aliases_are_accepted_identities_and_auto_mtls_can_be_turned_off() {
        let plain = outbound(crate::mesh::MeshConfig::default());
        assert_eq!(sans(&plain), ["spiffe://cluster.local/ns/default/sa/reviews"]);
        let aliased = outbound(crate::mesh::MeshConfig {
            trust_domain: Some("new.example".into()),
            trust_domain_aliases: vec!["cluster.local".into()],
            ..Default::default()
        });
        assert_eq!(
            sans(&aliased),
            ["spiffe://cluster.local/ns/default/sa/reviews", "spiffe://new.example/ns/default/sa/reviews"]
        );
        let off = outbound(crate::mesh::MeshConfig { enable_auto_mtls: Some(false), ..Default::default() });
        assert!(off.transport_socket_matches.is_empty() && off.transport_socket.is_none());
    }

    #[test]
    fn under_strict_captured_traffic_no_port_chain_takes_must_be_mutual_tls_too() {
        let yaml = format!(
            "{MESH}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        );
        let snapshot = Snapshot::new(1, weft_api::parse_text("m.yaml", &yaml).resources);
        let mut captured = proxy(Role::Sidecar, &[]);
        captured.interception_mode = "REDIRECT".into();
        let default_chain = |p: &ProxyIdentity| {
            super::super::listeners_for(&snapshot, p, &[])
                .into_iter()
                .find(|l| l.name == "virtualInbound")
                .and_then(|l| l.default_filter_chain)
        };
        // Without an identity there is nothing to terminate mutual TLS with.
        assert!(default_chain(&captured).is_some_and(|c| c.transport_socket.is_none()));
        captured.sds = true;
        assert!(default_chain(&captured).is_some_and(|c| c.transport_socket.is_some()));
    }

    #[test]
    fn tls_defaults_shape_tls_a_destination_rule_originates() {
        let yaml = format!(
            "{MESH}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: reviews, trafficPolicy: {{tls: {{mode: SIMPLE}}}}}}\n"
        );
        let mesh = crate::mesh::MeshConfig {
            tls_defaults: Some(crate::mesh::TlsConfig {
                ecdh_curves: vec!["P-256".into()],
                cipher_suites: vec!["ECDHE-ECDSA-AES128-GCM-SHA256".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let snapshot = Snapshot::new(1, weft_api::parse_text("m.yaml", &yaml).resources).with_mesh(mesh);
        let clusters = super::super::clusters_for(&snapshot, &proxy(Role::Sidecar, &[]));
        let c = clusters.iter().find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local");
        let Some(transport_socket::ConfigType::TypedConfig(any)) =
            c.and_then(|c| c.transport_socket.as_ref()).and_then(|t| t.config_type.clone())
        else {
            panic!("no TLS on the cluster");
        };
        let params = UpstreamTlsContext::decode(any.value.as_slice())
            .unwrap_or_default()
            .common_tls_context
            .and_then(|c| c.tls_params)
            .unwrap_or_default();
        assert_eq!(params.ecdh_curves, ["P-256"]);
        assert_eq!(params.cipher_suites, ["ECDHE-ECDSA-AES128-GCM-SHA256"]);
    }

    #[test]
    fn tls_origination_without_ca_certificates_trusts_the_system_roots_and_checks_the_sni() {
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
        let yaml = format!(
            "{MESH}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: reviews, trafficPolicy: {{tls: {{mode: SIMPLE}}}}}}\n"
        );
        let snapshot = Snapshot::new(1, weft_api::parse_text("m.yaml", &yaml).resources);
        let validation = |p: &ProxyIdentity| {
            let clusters = super::super::clusters_for(&snapshot, p);
            let c = clusters.iter().find(|c| c.name == "outbound|9080||reviews.default.svc.cluster.local");
            let Some(transport_socket::ConfigType::TypedConfig(any)) =
                c.and_then(|c| c.transport_socket.as_ref()).and_then(|t| t.config_type.clone())
            else {
                panic!("no TLS on the cluster");
            };
            UpstreamTlsContext::decode(any.value.as_slice())
                .unwrap_or_default()
                .common_tls_context
                .and_then(|c| c.validation_context_type)
        };
        let sans = |v: &CertificateValidationContext| -> Vec<String> {
            v.match_typed_subject_alt_names
                .iter()
                .filter_map(|m| m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()))
                .map(|p| format!("{p:?}"))
                .collect()
        };
        let expected_sans =
            [format!("{:?}", string_matcher::MatchPattern::Exact("reviews.default.svc.cluster.local".into()))];
        let mut client = proxy(Role::Sidecar, &[]);
        let Some(ValidationContextType::ValidationContext(v)) = validation(&client) else {
            panic!("a proxy without an agent reads the roots from a file")
        };
        assert_eq!(
            v.trusted_ca.clone().and_then(|d| d.specifier).map(|s| format!("{s:?}")),
            Some(format!(
                "{:?}",
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename(
                    "/etc/ssl/certs/ca-certificates.crt".into()
                )
            ))
        );
        assert_eq!(sans(&v), expected_sans);
        client.sds = true;
        let Some(ValidationContextType::CombinedValidationContext(c)) = validation(&client) else {
            panic!("a proxy with an agent asks it for the system's roots")
        };
        assert_eq!(c.validation_context_sds_secret_config.map(|s| s.name).as_deref(), Some(SYSTEM_ROOTS));
        assert_eq!(c.default_validation_context.as_ref().map(sans), Some(expected_sans.to_vec()));
    }
}
