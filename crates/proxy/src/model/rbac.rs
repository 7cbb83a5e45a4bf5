//! Envoy's RBAC filters (HTTP `envoy.filters.http.rbac` and network
//! `envoy.filters.network.rbac`), compiled into matchers a connection or request is
//! checked against. This is how Istio's AuthorizationPolicy reaches proxies.
//!
//! A policy matches when any of its permissions and any of its principals match. With
//! action ALLOW a request passes only if some policy matches; with DENY it passes only
//! if none does; LOG (Istio's AUDIT) never blocks.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, Rbac, permission, principal, rbac};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, metadata_matcher, path_matcher, value_matcher,
};

use super::ConfigError;
use super::jwt::AuthMetadata;

/// The metadata namespace of validated request credentials, as Istio names it.
const AUTHN_METADATA: &str = "istio_authn";
use super::route::{HeaderMatch, StringMatch, header_match};

/// What an RBAC filter does with a matching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Only matching requests pass.
    Allow,
    /// Matching requests are refused.
    Deny,
    /// Matching requests are noted, never refused (Istio's AUDIT).
    Log,
}

/// One compiled RBAC filter.
#[derive(Debug)]
pub struct RbacFilter {
    /// What a match means.
    pub action: RbacAction,
    /// Policies by name, in name order.
    pub policies: Vec<(String, RbacPolicy)>,
}

/// One policy: any permission and any principal.
#[derive(Debug)]
pub struct RbacPolicy {
    permissions: Vec<Rule>,
    principals: Vec<Rule>,
}

/// What a request (or connection) offers to be matched on.
#[derive(Debug, Default)]
pub struct Subject<'a> {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// Where the client connected to.
    pub destination: Option<SocketAddr>,
    /// The client certificate's URI SAN (`spiffe://...`).
    pub principal: Option<&'a str>,
    /// The TLS server name asked for.
    pub sni: Option<&'a str>,
    /// HTTP: method, authority, path and headers (None for TCP).
    pub http: Option<HttpSubject<'a>>,
    /// What the JWT filter validated (`request.auth.*`), Istio's `istio_authn` metadata.
    pub metadata: Option<&'a AuthMetadata>,
}

/// The HTTP part of a [`Subject`].
#[derive(Debug)]
pub struct HttpSubject<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:path` with the query.
    pub path: &'a str,
    /// Headers.
    pub headers: &'a hyper::HeaderMap,
}

/// A permission or principal condition.
#[derive(Debug)]
enum Rule {
    Any,
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    Header(PseudoOrHeader),
    UrlPath(StringMatch),
    DestinationIp(Cidr),
    DestinationPort(u16),
    Sni(StringMatch),
    Principal(Option<StringMatch>),
    PeerIp(Cidr),
    Metadata { filter: String, key: String, value: Option<StringMatch>, invert: bool },
}

#[derive(Debug)]
enum PseudoOrHeader {
    Pseudo(&'static str, HeaderMatch),
    Header(HeaderMatch),
}

#[derive(Debug)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn compile(c: &CidrRange) -> Result<Cidr, ConfigError> {
        let network: IpAddr = c
            .address_prefix
            .parse()
            .map_err(|_| ConfigError::new(format!("{:?} is not an IP address", c.address_prefix)))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = c.prefix_len.as_ref().map_or(max, |p| p.value);
        if prefix > max {
            return Err(ConfigError::new(format!("prefix length {prefix} is too long for {network}")));
        }
        Ok(Cidr { network, prefix: prefix as u8 })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Compiles an RBAC filter's rules (None: no rules, which allows everything).
pub fn compile_rbac(rules: Option<&Rbac>) -> Result<Option<RbacFilter>, ConfigError> {
    let Some(rules) = rules else { return Ok(None) };
    let action = match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow) => RbacAction::Allow,
        Ok(rbac::Action::Deny) => RbacAction::Deny,
        Ok(rbac::Action::Log) => RbacAction::Log,
        _ => return Err(ConfigError::new(format!("RBAC action {} is not supported", rules.action))),
    };
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &rules.policies[name];
        let ctx = |e: ConfigError| e.context(format!("RBAC policy {name}"));
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(ctx(ConfigError::new("CEL conditions are not supported")));
        }
        let permissions = p.permissions.iter().map(permission).collect::<Result<_, _>>().map_err(ctx)?;
        let principals = p.principals.iter().map(principal).collect::<Result<_, _>>().map_err(ctx)?;
        policies.push((name.clone(), RbacPolicy { permissions, principals }));
    }
    Ok(Some(RbacFilter { action, policies }))
}

fn header(h: &envoy_types::pb::envoy::config::route::v3::HeaderMatcher) -> Result<Rule, ConfigError> {
    let pseudo = match h.name.as_str() {
        ":method" => Some(":method"),
        ":authority" | "host" => Some(":authority"),
        ":path" => Some(":path"),
        _ => None,
    };
    Ok(Rule::Header(match pseudo {
        Some(name) => {
            // Only the value is matched; the name just needs to compile.
            let mut plain = h.clone();
            plain.name = "x-pseudo".into();
            PseudoOrHeader::Pseudo(name, header_match(&plain)?)
        }
        None => PseudoOrHeader::Header(header_match(h)?),
    }))
}

fn path(p: &PathMatcher) -> Result<Rule, ConfigError> {
    match &p.rule {
        Some(path_matcher::Rule::Path(m)) => Ok(Rule::UrlPath(StringMatch::compile(m)?)),
        None => Err(ConfigError::new("a path matcher without a rule")),
    }
}

fn metadata(m: &MetadataMatcher) -> Result<Rule, ConfigError> {
    let key = match m.path.as_slice() {
        [one] => match &one.segment {
            Some(metadata_matcher::path_segment::Segment::Key(k)) => k.clone(),
            None => return Err(ConfigError::new("an empty metadata path")),
        },
        _ => return Err(ConfigError::new("metadata paths of more than one key are not supported")),
    };
    let value = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(value_matcher::MatchPattern::StringMatch(s)) => Some(StringMatch::compile(s)?),
        Some(value_matcher::MatchPattern::PresentMatch(true)) => None,
        _ => return Err(ConfigError::new("metadata matchers other than string and presence are not supported")),
    };
    Ok(Rule::Metadata { filter: m.filter.clone(), key, value, invert: m.invert })
}

#[allow(deprecated)] // Istio still sends the `metadata` form, which Envoy accepts.
fn permission(p: &Permission) -> Result<Rule, ConfigError> {
    use permission::Rule as R;
    Ok(match &p.rule {
        Some(R::Any(true)) => Rule::Any,
        Some(R::AndRules(s)) => Rule::And(s.rules.iter().map(permission).collect::<Result<_, _>>()?),
        Some(R::OrRules(s)) => Rule::Or(s.rules.iter().map(permission).collect::<Result<_, _>>()?),
        Some(R::NotRule(n)) => Rule::Not(Box::new(permission(n)?)),
        Some(R::Header(h)) => header(h)?,
        Some(R::UrlPath(u)) => path(u)?,
        Some(R::DestinationIp(c)) => Rule::DestinationIp(Cidr::compile(c)?),
        Some(R::DestinationPort(port)) => Rule::DestinationPort(
            u16::try_from(*port).map_err(|_| ConfigError::new(format!("port {port} out of range")))?,
        ),
        Some(R::RequestedServerName(s)) => Rule::Sni(StringMatch::compile(s)?),
        Some(R::Metadata(m)) => metadata(m)?,
        _ => return Err(ConfigError::new("an RBAC permission weft does not support")),
    })
}

#[allow(deprecated)]
fn principal(p: &Principal) -> Result<Rule, ConfigError> {
    use principal::Identifier as I;
    Ok(match &p.identifier {
        Some(I::Any(true)) => Rule::Any,
        Some(I::AndIds(s)) => Rule::And(s.ids.iter().map(principal).collect::<Result<_, _>>()?),
        Some(I::OrIds(s)) => Rule::Or(s.ids.iter().map(principal).collect::<Result<_, _>>()?),
        Some(I::NotId(n)) => Rule::Not(Box::new(principal(n)?)),
        Some(I::Authenticated(a)) => Rule::Principal(a.principal_name.as_ref().map(StringMatch::compile).transpose()?),
        Some(I::DirectRemoteIp(c) | I::RemoteIp(c)) => Rule::PeerIp(Cidr::compile(c)?),
        Some(I::SourceIp(c)) => Rule::PeerIp(Cidr::compile(c)?),
        Some(I::Header(h)) => header(h)?,
        Some(I::UrlPath(u)) => path(u)?,
        Some(I::Metadata(m)) => metadata(m)?,
        _ => return Err(ConfigError::new("an RBAC principal weft does not support")),
    })
}

impl Rule {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Rule::Any => true,
            Rule::And(rules) => rules.iter().all(|r| r.matches(s)),
            Rule::Or(rules) => rules.iter().any(|r| r.matches(s)),
            Rule::Not(r) => !r.matches(s),
            Rule::Header(h) => {
                let Some(http) = &s.http else { return false };
                match h {
                    PseudoOrHeader::Header(h) => h.matches(http.headers),
                    PseudoOrHeader::Pseudo(name, h) => {
                        let value = match *name {
                            ":method" => http.method,
                            ":authority" => http.authority,
                            _ => http.path,
                        };
                        h.matches_value(Some(value))
                    }
                }
            }
            Rule::UrlPath(m) => s.http.as_ref().is_some_and(|h| m.matches(h.path.split('?').next().unwrap_or(""))),
            Rule::DestinationIp(c) => s.destination.is_some_and(|d| c.contains(d.ip())),
            Rule::DestinationPort(p) => s.destination.is_some_and(|d| d.port() == *p),
            Rule::Sni(m) => s.sni.is_some_and(|n| m.matches(n)),
            Rule::Principal(None) => s.principal.is_some(),
            Rule::Principal(Some(m)) => s.principal.is_some_and(|p| m.matches(p)),
            Rule::PeerIp(c) => s.peer.is_some_and(|p| c.contains(p.ip())),
            Rule::Metadata { filter, key, value, invert } => {
                let found = s.metadata.filter(|_| filter == AUTHN_METADATA).and_then(|m| m.get(key));
                let hit = match (found, value) {
                    (Some(values), Some(m)) => values.iter().any(|v| m.matches(v)),
                    (Some(values), None) => !values.is_empty(),
                    (None, _) => false,
                };
                hit != *invert
            }
        }
    }
}

impl RbacFilter {
    /// Whether the filter lets the subject through; with the deciding policy's name.
    pub fn allows(&self, s: &Subject<'_>) -> (bool, Option<&str>) {
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.permissions.iter().any(|r| r.matches(s)) && p.principals.iter().any(|r| r.matches(s)))
            .map(|(n, _)| n.as_str());
        match self.action {
            RbacAction::Allow => (matched.is_some(), matched),
            RbacAction::Deny => (matched.is_none(), matched),
            RbacAction::Log => (true, matched),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        let (ip, len) = text.split_once('/').unwrap_or((text, "32"));
        Cidr::compile(&CidrRange {
            address_prefix: ip.into(),
            prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: len.parse().unwrap_or(32) }),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cidr_ranges_match_by_prefix_and_mapped_addresses() {
        let c = cidr("10.1.0.0/16");
        assert!(c.contains("10.1.200.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(!c.contains("10.2.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
        assert!(cidr("0.0.0.0/0").contains("192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))));
    }
}
