//! AuthorizationPolicy, expressed as Envoy's RBAC filters on a workload's inbound
//! filter chains, as Istio expresses it: one RBAC filter per action present (DENY before
//! ALLOW; AUDIT as LOG), one RBAC policy per rule, named `ns[NS]-policy[NAME]-rule[N]`.
//!
//! A rule matches when one of its `from` sources, one of its `to` operations and every
//! `when` condition match; a field's values are alternatives, its `not` form excludes.
//! Values follow Istio's string rules: `*` is any non-empty value, `x*` a prefix, `*x` a
//! suffix, anything else exact. An ALLOW policy turns default-deny on: a request no
//! ALLOW rule matches is refused (so an ALLOW policy without rules allows nothing).
//!
//! On TCP chains HTTP-only fields cannot be checked: an ALLOW rule using them is dropped
//! (it allows nothing), a DENY rule is kept without them (it denies more), as Istio does.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, principal::Authenticated, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher, metadata_matcher, path_matcher,
    string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::UInt32Value;
use prost::{Message, Name};
use weft_api::istio::{AuthorizationAction, AuthorizationPolicySpec, Condition, Operation, Rule, Source};
use weft_api::{Resource, Spec};

use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;

/// The metadata the JWT filter leaves for authorization (Istio's `istio_authn`).
const AUTHN_METADATA: &str = "istio_authn";

/// The AuthorizationPolicies that apply to `proxy`'s workload.
fn policies_for<'a>(snapshot: &'a Snapshot, proxy: &ProxyIdentity) -> Vec<(&'a Resource, &'a AuthorizationPolicySpec)> {
    super::policies_for(snapshot, proxy, |spec| match spec {
        Spec::AuthorizationPolicy(p) => {
            Some((p.as_ref(), p.selector.as_ref(), p.target_ref.is_some() || !p.target_refs.is_empty()))
        }
        _ => None,
    })
}

/// Istio's string rules, for `value` matched by `m`.
fn istio_string(value: &str, prefix_with: &str) -> StringMatcher {
    let pattern = if value == "*" {
        string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex: ".+".into(), ..Default::default() })
    } else if let Some(p) = value.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(format!("{prefix_with}{p}"))
    } else if let Some(s) = value.strip_prefix('*') {
        string_matcher::MatchPattern::Suffix(s.to_owned())
    } else {
        string_matcher::MatchPattern::Exact(format!("{prefix_with}{value}"))
    };
    StringMatcher { match_pattern: Some(pattern), ..Default::default() }
}

fn or_p(rules: Vec<Permission>) -> Permission {
    Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules })) }
}

fn and_p(rules: Vec<Permission>) -> Permission {
    if rules.is_empty() {
        return Permission { rule: Some(permission::Rule::Any(true)) };
    }
    Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules })) }
}

fn not_p(p: Permission) -> Permission {
    Permission { rule: Some(permission::Rule::NotRule(Box::new(p))) }
}

fn or_i(ids: Vec<Principal>) -> Principal {
    Principal { identifier: Some(principal::Identifier::OrIds(principal::Set { ids })) }
}

fn and_i(ids: Vec<Principal>) -> Principal {
    if ids.is_empty() {
        return Principal { identifier: Some(principal::Identifier::Any(true)) };
    }
    Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids })) }
}

fn not_i(p: Principal) -> Principal {
    Principal { identifier: Some(principal::Identifier::NotId(Box::new(p))) }
}

fn header(name: &str, m: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())), ..Default::default() }
}

fn cidr(block: &str) -> Option<CidrRange> {
    let (ip, len) = match block.split_once('/') {
        Some((ip, len)) => (ip, len.parse().ok()?),
        None => (block, if block.contains(':') { 128 } else { 32 }),
    };
    ip.parse::<std::net::IpAddr>().ok()?;
    Some(CidrRange { address_prefix: ip.to_owned(), prefix_len: Some(UInt32Value { value: len }) })
}

fn principal_name(m: StringMatcher) -> Principal {
    Principal { identifier: Some(principal::Identifier::Authenticated(Authenticated { principal_name: Some(m) })) }
}

/// A namespace value with Istio's `*` rules (`*`, `prod-*`, `*-prod`).
fn namespace_matcher(ns: &str) -> Principal {
    let pattern = if ns == "*" {
        "[^/]+".to_owned()
    } else if let Some(prefix) = ns.strip_suffix('*') {
        format!("{}[^/]*", regex_escape(prefix))
    } else if let Some(suffix) = ns.strip_prefix('*') {
        format!("[^/]*{}", regex_escape(suffix))
    } else {
        regex_escape(ns)
    };
    let regex = format!(".*/ns/{pattern}/.*");
    principal_name(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex, ..Default::default() })),
        ..Default::default()
    })
}

fn regex_escape(text: &str) -> String {
    regex::escape(text)
}

#[allow(deprecated)] // Istio's form, which Envoy still accepts.
fn auth_metadata(key: &str, m: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Metadata(MetadataMatcher {
            filter: AUTHN_METADATA.into(),
            path: vec![metadata_matcher::PathSegment {
                segment: Some(metadata_matcher::path_segment::Segment::Key(key.to_owned())),
            }],
            value: Some(ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)) }),
            invert: false,
        })),
    }
}

fn path(value: &str) -> Permission {
    let matcher =
        if value.contains("{*}") || value.contains("{**}") { path_template(value) } else { istio_string(value, "") };
    Permission { rule: Some(permission::Rule::UrlPath(PathMatcher { rule: Some(path_matcher::Rule::Path(matcher)) })) }
}

/// Istio's path templates: `{*}` is one path segment, `{**}` any number of them.
fn path_template(value: &str) -> StringMatcher {
    let mut regex = String::new();
    let mut rest = value;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{**}") {
            regex.push_str(".*");
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{*}") {
            regex.push_str("[^/]+");
            rest = r;
        } else {
            let c = rest.chars().next().unwrap_or_default();
            regex.push_str(&regex_escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex, ..Default::default() })),
        ..Default::default()
    }
}

fn host(value: &str) -> Permission {
    let mut m = istio_string(value, "");
    m.ignore_case = true;
    let with_port = HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(format!("{value}:"))),
            ignore_case: true,
        })),
        ..Default::default()
    };
    let plain = Permission { rule: Some(permission::Rule::Header(header(":authority", m))) };
    if value.contains('*') {
        plain
    } else {
        or_p(vec![plain, Permission { rule: Some(permission::Rule::Header(with_port)) }])
    }
}

/// Adds `positive` as alternatives and `negative` as exclusions.
fn field<T>(
    out: &mut Vec<T>,
    values: &[String],
    not_values: &[String],
    each: impl Fn(&str) -> Option<T>,
    or: impl Fn(Vec<T>) -> T,
    not: impl Fn(T) -> T,
) {
    if !values.is_empty() {
        out.push(or(values.iter().filter_map(|v| each(v)).collect()));
    }
    if !not_values.is_empty() {
        out.push(not(or(not_values.iter().filter_map(|v| each(v)).collect())));
    }
}

fn operation(op: &Operation, http: bool) -> Permission {
    let mut all = Vec::new();
    if http {
        field(&mut all, &op.hosts, &op.not_hosts, |v| Some(host(v)), or_p, not_p);
        field(
            &mut all,
            &op.methods,
            &op.not_methods,
            |v| Some(Permission { rule: Some(permission::Rule::Header(header(":method", exact(v)))) }),
            or_p,
            not_p,
        );
        field(&mut all, &op.paths, &op.not_paths, |v| Some(path(v)), or_p, not_p);
    }
    let port = |v: &str| v.parse::<u32>().ok().map(|p| Permission { rule: Some(permission::Rule::DestinationPort(p)) });
    field(&mut all, &op.ports, &op.not_ports, port, or_p, not_p);
    and_p(all)
}

fn source(s: &Source, snapshot: &Snapshot, http: bool) -> Principal {
    let mut all = Vec::new();
    let peer_principal = |v: &str| Some(principal_name(istio_string(v, "spiffe://")));
    field(&mut all, &s.principals, &s.not_principals, peer_principal, or_i, not_i);
    field(&mut all, &s.namespaces, &s.not_namespaces, |v| Some(namespace_matcher(v)), or_i, not_i);
    let account = |v: &str| {
        let (ns, sa) = v.split_once('/')?;
        Some(principal_name(exact(&format!("spiffe://{}/ns/{ns}/sa/{sa}", snapshot.trust_domain))))
    };
    field(&mut all, &s.service_accounts, &s.not_service_accounts, account, or_i, not_i);
    let domain = |v: &str| {
        let m = StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(format!("spiffe://{v}/"))),
            ..Default::default()
        };
        Some(principal_name(m))
    };
    field(&mut all, &s.trust_domains, &s.not_trust_domains, domain, or_i, not_i);
    let direct = |v: &str| cidr(v).map(|c| Principal { identifier: Some(principal::Identifier::DirectRemoteIp(c)) });
    field(&mut all, &s.ip_blocks, &s.not_ip_blocks, direct, or_i, not_i);
    let remote = |v: &str| cidr(v).map(|c| Principal { identifier: Some(principal::Identifier::RemoteIp(c)) });
    field(&mut all, &s.remote_ip_blocks, &s.not_remote_ip_blocks, remote, or_i, not_i);
    if http {
        let rp = |v: &str| Some(auth_metadata("request.auth.principal", istio_string(v, "")));
        field(&mut all, &s.request_principals, &s.not_request_principals, rp, or_i, not_i);
    }
    and_i(all)
}

/// A `when` condition, as a permission or a principal; None when it is HTTP-only and
/// the chain is TCP.
enum When {
    Permission(Permission),
    Principal(Principal),
}

fn condition(c: &Condition, snapshot: &Snapshot, http: bool) -> Option<When> {
    let key = c.key.as_deref().unwrap_or("");
    let (values, not_values) = (&c.values, &c.not_values);
    let mut ids = Vec::new();
    let mut perms = Vec::new();
    if let Some(name) = key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
        if !http {
            return None;
        }
        let name = name.to_ascii_lowercase();
        let h = |v: &str| {
            Some(Principal { identifier: Some(principal::Identifier::Header(header(&name, istio_string(v, "")))) })
        };
        field(&mut ids, values, not_values, h, or_i, not_i);
    } else if let Some(claim) = key.strip_prefix("request.auth.claims[").and_then(|k| k.strip_suffix(']')) {
        if !http {
            return None;
        }
        let key = format!("request.auth.claims.{claim}");
        field(&mut ids, values, not_values, |v| Some(auth_metadata(&key, istio_string(v, ""))), or_i, not_i);
    } else {
        match key {
            "source.ip" => field(
                &mut ids,
                values,
                not_values,
                |v| cidr(v).map(|c| Principal { identifier: Some(principal::Identifier::DirectRemoteIp(c)) }),
                or_i,
                not_i,
            ),
            "remote.ip" => field(
                &mut ids,
                values,
                not_values,
                |v| cidr(v).map(|c| Principal { identifier: Some(principal::Identifier::RemoteIp(c)) }),
                or_i,
                not_i,
            ),
            "source.namespace" => field(&mut ids, values, not_values, |v| Some(namespace_matcher(v)), or_i, not_i),
            "source.principal" => {
                field(&mut ids, values, not_values, |v| Some(principal_name(istio_string(v, "spiffe://"))), or_i, not_i)
            }
            "source.serviceAccount" => field(
                &mut ids,
                values,
                not_values,
                |v| {
                    let (ns, sa) = v.split_once('/')?;
                    Some(principal_name(exact(&format!("spiffe://{}/ns/{ns}/sa/{sa}", snapshot.trust_domain))))
                },
                or_i,
                not_i,
            ),
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
                if !http {
                    return None;
                }
                field(&mut ids, values, not_values, |v| Some(auth_metadata(key, istio_string(v, ""))), or_i, not_i);
            }
            "destination.ip" => field(
                &mut perms,
                values,
                not_values,
                |v| cidr(v).map(|c| Permission { rule: Some(permission::Rule::DestinationIp(c)) }),
                or_p,
                not_p,
            ),
            "destination.port" => field(
                &mut perms,
                values,
                not_values,
                |v| v.parse().ok().map(|p| Permission { rule: Some(permission::Rule::DestinationPort(p)) }),
                or_p,
                not_p,
            ),
            "connection.sni" => field(
                &mut perms,
                values,
                not_values,
                |v| Some(Permission { rule: Some(permission::Rule::RequestedServerName(istio_string(v, ""))) }),
                or_p,
                not_p,
            ),
            _ => return None,
        }
    }
    if !perms.is_empty() { Some(When::Permission(and_p(perms))) } else { Some(When::Principal(and_i(ids))) }
}

fn uses_http_fields(rule: &Rule) -> bool {
    let op = rule.to.iter().filter_map(|t| t.operation.as_ref()).any(|o| {
        !o.hosts.is_empty()
            || !o.not_hosts.is_empty()
            || !o.methods.is_empty()
            || !o.not_methods.is_empty()
            || !o.paths.is_empty()
            || !o.not_paths.is_empty()
    });
    let from = rule
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let when = rule.when.iter().any(|c| c.key.as_deref().is_some_and(|k| k.starts_with("request.")));
    op || from || when
}

/// The Envoy policy of one rule. A condition weft cannot express drops an ALLOW rule
/// (it allows nothing) and is left out of a DENY rule (it denies more).
fn rule_policy(rule: &Rule, snapshot: &Snapshot, http: bool, action: AuthorizationAction) -> Option<Policy> {
    let mut permissions = Vec::new();
    let operations: Vec<Permission> =
        rule.to.iter().filter_map(|t| t.operation.as_ref()).map(|o| operation(o, http)).collect();
    if !operations.is_empty() {
        permissions.push(or_p(operations));
    }
    let mut principals = Vec::new();
    let sources: Vec<Principal> =
        rule.from.iter().filter_map(|f| f.source.as_ref()).map(|s| source(s, snapshot, http)).collect();
    if !sources.is_empty() {
        principals.push(or_i(sources));
    }
    for c in &rule.when {
        match condition(c, snapshot, http) {
            Some(When::Permission(p)) => permissions.push(p),
            Some(When::Principal(p)) => principals.push(p),
            None if action == AuthorizationAction::Deny => {}
            None => return None,
        }
    }
    Some(Policy { permissions: vec![and_p(permissions)], principals: vec![and_i(principals)], ..Default::default() })
}

/// Envoy's RBAC rules encoded with their policies in name order. The generated type
/// keeps policies in a `HashMap`, whose order changes from one encoding to the next; the
/// same configuration must encode to the same bytes, or every push would look like a
/// change to every proxy. These messages have the same wire form as Envoy's.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedRbac {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(message, repeated, tag = "2")]
    policies: Vec<PolicyEntry>,
}

/// One entry of the `policies` map.
#[derive(Clone, PartialEq, prost::Message)]
struct PolicyEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedHttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedNetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<SortedRbac>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
}

fn sorted(rules: Rbac) -> SortedRbac {
    let mut policies: Vec<PolicyEntry> =
        rules.policies.into_iter().map(|(key, value)| PolicyEntry { key, value: Some(value) }).collect();
    policies.sort_by(|a, b| a.key.cmp(&b.key));
    SortedRbac { action: rules.action, policies }
}

/// RBAC rules for `proxy`'s workload, per Envoy action (DENY, ALLOW, LOG), for an HTTP
/// or a TCP chain. An action absent from every policy yields no filter.
fn rbac_rules(snapshot: &Snapshot, proxy: &ProxyIdentity, http: bool) -> Vec<Rbac> {
    let mut by_action: Vec<(rbac::Action, HashMap<String, Policy>)> = Vec::new();
    for (action, envoy) in [
        (AuthorizationAction::Deny, rbac::Action::Deny),
        (AuthorizationAction::Allow, rbac::Action::Allow),
        (AuthorizationAction::Audit, rbac::Action::Log),
    ] {
        // CUSTOM needs an external authorizer weft does not have yet: its requests are
        // denied (fail closed), as Istio does when the provider is missing.
        let policies: Vec<_> = policies_for(snapshot, proxy)
            .into_iter()
            .filter(|(_, p)| {
                let a = p.action.unwrap_or(AuthorizationAction::Allow);
                a == action || (a == AuthorizationAction::Custom && action == AuthorizationAction::Deny)
            })
            .collect();
        if policies.is_empty() {
            continue;
        }
        let mut out = HashMap::new();
        for (r, p) in policies {
            for (i, rule) in p.rules.iter().enumerate() {
                if !http && uses_http_fields(rule) && action != AuthorizationAction::Deny {
                    continue;
                }
                let Some(policy) = rule_policy(rule, snapshot, http, action) else { continue };
                out.insert(format!("ns[{}]-policy[{}]-rule[{i}]", r.namespace(), r.name()), policy);
            }
        }
        by_action.push((envoy, out));
    }
    by_action
        .into_iter()
        .map(|(action, policies)| Rbac { action: action as i32, policies, ..Default::default() })
        .collect()
}

/// Adds the workload's authorization to an inbound chain: RBAC HTTP filters first in
/// its connection manager, or network RBAC filters before its TCP proxy.
pub(super) fn apply(snapshot: &Snapshot, proxy: &ProxyIdentity, chain: &mut FilterChain) {
    let http = chain.filters.iter().any(|f| f.name == super::listener::HCM);
    let rules = rbac_rules(snapshot, proxy, http);
    if rules.is_empty() {
        return;
    }
    if !http {
        let filters = rules.into_iter().map(|rules| Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: NetworkRbac::type_url(),
                value: SortedNetworkRbac { rules: Some(sorted(rules)), stat_prefix: "tcp.".into() }.encode_to_vec(),
            })),
        });
        let tail = std::mem::take(&mut chain.filters);
        chain.filters = filters.chain(tail).collect();
        return;
    }
    super::listener::edit_hcm(chain, |hcm| {
        let filters = rules.iter().map(|rules| HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: HttpRbac::type_url(),
                value: SortedHttpRbac { rules: Some(sorted(rules.clone())) }.encode_to_vec(),
            })),
            ..Default::default()
        });
        hcm.http_filters = filters.chain(std::mem::take(&mut hcm.http_filters)).collect();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Role;
    use crate::testing::proxy;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: many-rules}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - to: [{operation: {paths: [/a]}}]
  - to: [{operation: {paths: [/b]}}]
  - to: [{operation: {paths: [/c]}}]
  - to: [{operation: {paths: [/d]}}]
  - from: [{source: {namespaces: [x]}}]
"#;

    fn translated(snapshot: &Snapshot, http: bool) -> FilterChain {
        let name = "inbound|9000||";
        let mut chain = if http {
            let route = super::super::listener::inbound_route(name, 9000, None);
            super::super::listener::http_chain(
                "inbound_9000",
                super::super::listener::RouteSource::Inline(Box::new(route)),
            )
        } else {
            super::super::listener::tcp_chain(name, &[(name.into(), 100)])
        };
        apply(snapshot, &proxy(Role::Sidecar, &[("app", "server")]), &mut chain);
        chain
    }

    fn policy_names(any: &Any, http: bool) -> Vec<String> {
        let rules = if http {
            HttpRbac::decode(any.value.as_slice()).unwrap_or_default().rules
        } else {
            NetworkRbac::decode(any.value.as_slice()).unwrap_or_default().rules
        };
        let mut names: Vec<String> = rules.unwrap_or_default().policies.into_keys().collect();
        names.sort();
        names
    }

    #[test]
    fn the_same_policies_encode_to_the_same_bytes_every_time() {
        let snapshot = Snapshot::new(1, weft_api::parse_text("p.yaml", POLICIES).resources);
        let first = translated(&snapshot, true).encode_to_vec();
        for _ in 0..20 {
            assert_eq!(translated(&snapshot, true).encode_to_vec(), first);
        }
        // Envoy's own types read them back, every rule a policy.
        let chain = FilterChain::decode(first.as_slice()).unwrap_or_default();
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else { panic!("no HCM") };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap_or_default();
        let Some(http_filter::ConfigType::TypedConfig(rbac)) = &hcm.http_filters[0].config_type else {
            panic!("no RBAC filter")
        };
        let all: Vec<String> = (0..5).map(|i| format!("ns[default]-policy[many-rules]-rule[{i}]")).collect();
        assert_eq!(policy_names(rbac, true), all);
    }

    #[test]
    fn on_tcp_an_allow_rule_with_http_fields_is_dropped() {
        let snapshot = Snapshot::new(1, weft_api::parse_text("p.yaml", POLICIES).resources);
        let chain = translated(&snapshot, false);
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("no RBAC filter")
        };
        assert_eq!(policy_names(any, false), ["ns[default]-policy[many-rules]-rule[4]"]);
    }
}
