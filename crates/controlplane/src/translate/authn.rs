//! RequestAuthentication, as Envoy's JWT filter (`envoy.filters.http.jwt_authn`) at the
//! front of a workload's inbound HTTP filters, as Istio configures it: one provider per
//! rule; a request with a token must satisfy one of them (else 401), a request without
//! one passes (an AuthorizationPolicy on `requestPrincipals` can then refuse it). The
//! validated claims feed authorization (`request.auth.*`).
//!
//! Keys come from the rule's inline `jwks`, or from `jwksUri`, which the proxy fetches
//! and refreshes (Envoy's remote JWKS, with the cluster Istio would name for its host).

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::core::v3::{HttpUri, http_uri};
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement, JwtRequirementOrList, RemoteJwks,
    RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::google::protobuf::{Any, Duration, Empty};
use prost::{Message, Name};
use weft_api::istio::RequestAuthenticationSpec;
use weft_api::{Resource, Spec};

use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;

/// The RequestAuthentications that apply to `proxy`'s workload.
fn policies_for<'a>(
    snapshot: &'a Snapshot,
    proxy: &ProxyIdentity,
) -> Vec<(&'a Resource, &'a RequestAuthenticationSpec)> {
    super::policies_for(snapshot, proxy, |spec| match spec {
        Spec::RequestAuthentication(p) => {
            Some((p.as_ref(), p.selector.as_ref(), p.target_ref.is_some() || !p.target_refs.is_empty()))
        }
        _ => None,
    })
}

/// The JWT filter's providers in name order (the generated type keeps them in a
/// HashMap; the same configuration must encode to the same bytes).
#[derive(Clone, PartialEq, prost::Message)]
struct SortedJwtAuthentication {
    #[prost(message, repeated, tag = "1")]
    providers: Vec<ProviderEntry>,
    #[prost(message, repeated, tag = "2")]
    rules: Vec<RequirementRule>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProviderEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<JwtProvider>,
}

/// Envoy's remote JWKS for `uri`: fetched with a 5 s timeout, kept 5 minutes, through
/// the cluster Istio names for the host (`outbound|443||issuer.example.com`).
fn remote_jwks(uri: &str) -> RemoteJwks {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
    let authority = rest.split('/').next().unwrap_or(rest);
    let default_port = if scheme == "http" { 80 } else { 443 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().unwrap_or(default_port)),
        _ => (authority, default_port),
    };
    RemoteJwks {
        http_uri: Some(HttpUri {
            uri: uri.to_owned(),
            timeout: Some(Duration { seconds: 5, nanos: 0 }),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(format!("outbound|{port}||{host}"))),
        }),
        cache_duration: Some(Duration { seconds: 300, nanos: 0 }),
        ..Default::default()
    }
}

/// The JWT filter for `proxy`'s workload, if any RequestAuthentication selects it.
fn jwt_filter(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Option<HttpFilter> {
    let policies = policies_for(snapshot, proxy);
    if policies.is_empty() {
        return None;
    }
    let mut providers = Vec::new();
    for (r, p) in policies {
        for (i, rule) in p.jwt_rules.iter().enumerate() {
            let Some(issuer) = &rule.issuer else { continue };
            let jwks = match (&rule.jwks, rule.jwks_uri.as_ref().or(rule.jwks_uri_snake.as_ref())) {
                (Some(jwks), _) => jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(jwks.clone())),
                    ..Default::default()
                }),
                (None, Some(uri)) => jwt_provider::JwksSourceSpecifier::RemoteJwks(remote_jwks(uri)),
                (None, None) => continue,
            };
            let provider = JwtProvider {
                issuer: issuer.clone(),
                audiences: rule.audiences.clone(),
                forward: rule.forward_original_token.unwrap_or(false),
                from_headers: rule
                    .from_headers
                    .iter()
                    .map(|h| JwtHeader {
                        name: h.name.clone().unwrap_or_default(),
                        value_prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: rule.from_params.clone(),
                from_cookies: rule.from_cookies.clone(),
                forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
                claim_to_headers: rule
                    .output_claim_to_headers
                    .iter()
                    .map(|c| JwtClaimToHeader {
                        header_name: c.header.clone().unwrap_or_default(),
                        claim_name: c.claim.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect(),
                payload_in_metadata: issuer.clone(),
                jwks_source_specifier: Some(jwks),
                ..Default::default()
            };
            providers.push(ProviderEntry {
                key: format!("origins-{}-{}-{i}", r.namespace(), r.name()),
                value: Some(provider),
            });
        }
    }
    // Any provider may validate a token; no token at all is allowed through.
    let mut any: Vec<JwtRequirement> = providers
        .iter()
        .map(|p| JwtRequirement { requires_type: Some(jwt_requirement::RequiresType::ProviderName(p.key.clone())) })
        .collect();
    any.push(JwtRequirement { requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty::default())) });
    let rule = RequirementRule {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        requirement_type: Some(requirement_rule::RequirementType::Requires(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList { requirements: any })),
        })),
    };
    let config = SortedJwtAuthentication { providers, rules: vec![rule] };
    Some(HttpFilter {
        name: "envoy.filters.http.jwt_authn".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: JwtAuthentication::type_url(),
            value: config.encode_to_vec(),
        })),
        ..Default::default()
    })
}

/// Puts the workload's JWT filter first in an inbound HTTP chain's connection manager.
pub(super) fn apply(snapshot: &Snapshot, proxy: &ProxyIdentity, chain: &mut FilterChain) {
    let Some(jwt) = jwt_filter(snapshot, proxy) else { return };
    super::listener::edit_hcm(chain, |hcm| hcm.http_filters.insert(0, jwt.clone()));
}
