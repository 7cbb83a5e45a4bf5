//! Envoy's JWT filter (`envoy.filters.http.jwt_authn`), as Istio's RequestAuthentication
//! uses it: find a token (by default `Authorization: Bearer` or the `access_token` query
//! parameter), validate it against the provider of its issuer (signature by the
//! provider's JWKS, expiry, audiences), and leave its claims for authorization as
//! `request.auth.principal` (`iss/sub`), `request.auth.audiences`,
//! `request.auth.presenter` and `request.auth.claims.NAME`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::route_match;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, jwt_provider, jwt_requirement, requirement_rule,
};
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use super::ConfigError;
use super::route::header_name;

/// What a validated token tells authorization: key → values.
pub type AuthMetadata = BTreeMap<String, Vec<String>>;

/// A compiled JWT filter.
#[derive(Debug)]
pub struct JwtFilter {
    providers: Vec<Provider>,
    /// A request without a token passes.
    allow_missing: bool,
    /// A request whose token fails passes too (without claims).
    allow_failed: bool,
}

/// A JWKS's keys, by key id.
type Keys = Vec<(Option<String>, DecodingKey)>;

struct Provider {
    issuer: String,
    audiences: Vec<String>,
    /// Current keys (a remote JWKS is refetched in the background).
    keys: Arc<ArcSwap<Keys>>,
    /// Where remote keys come from, if they do.
    remote: Option<String>,
    from_headers: Vec<(HeaderName, String)>,
    from_params: Vec<String>,
    from_cookies: Vec<String>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("issuer", &self.issuer).field("keys", &self.keys.load().len()).finish()
    }
}

/// Why a request is refused (401), in Envoy's words.
pub type Refusal = &'static str;

fn provider(name: &str, p: &JwtProvider) -> Result<Provider, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("JWT provider {name}"));
    let (keys, remote) = match &p.jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(d)) => {
            let text = match &d.specifier {
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => return Err(ctx(ConfigError::new("only inline local JWKS are supported"))),
            };
            (Arc::new(ArcSwap::from_pointee(parse_jwks(&text).map_err(|e| ctx(ConfigError::new(e)))?)), None)
        }
        Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(r)) => {
            let http = r.http_uri.as_ref().ok_or_else(|| ctx(ConfigError::new("a remote JWKS without http_uri")))?;
            let timeout = http.timeout.as_ref().map_or(Duration::from_secs(5), super::duration);
            let every = r.cache_duration.as_ref().map_or(Duration::from_secs(600), super::duration);
            let keys = Arc::new(ArcSwap::from_pointee(Keys::new()));
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(refresh(Arc::downgrade(&keys), http.uri.clone(), timeout, every));
            }
            (keys, Some(http.uri.clone()))
        }
        None => return Err(ctx(ConfigError::new("a provider without JWKS"))),
    };
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        keys,
        remote,
        from_headers: p
            .from_headers
            .iter()
            .map(|h| Ok((header_name(&h.name)?, h.value_prefix.clone())))
            .collect::<Result<_, ConfigError>>()
            .map_err(ctx)?,
        from_params: p.from_params.clone(),
        from_cookies: p.from_cookies.clone(),
        forward: p.forward,
        payload_header: Some(&p.forward_payload_header)
            .filter(|h| !h.is_empty())
            .map(|h| header_name(h))
            .transpose()
            .map_err(ctx)?,
        claim_headers: p
            .claim_to_headers
            .iter()
            .map(|c| Ok((header_name(&c.header_name)?, c.claim_name.clone())))
            .collect::<Result<_, ConfigError>>()
            .map_err(ctx)?,
    })
}

fn parse_jwks(text: &str) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("the JWKS does not parse: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a JWKS key: {e}"))?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    Ok(keys)
}

/// Keeps a remote JWKS current while its provider lives: fetched at once, then every
/// `every`; a failed fetch is retried after 5 s and the last good keys stay in use.
async fn refresh(keys: Weak<ArcSwap<Keys>>, uri: String, timeout: Duration, every: Duration) {
    loop {
        let wait = match crate::fetch::get(&uri, timeout).await.and_then(|b| parse_jwks(&String::from_utf8_lossy(&b))) {
            Ok(fetched) => {
                let Some(slot) = keys.upgrade() else { return };
                tracing::debug!(%uri, keys = fetched.len(), "JWKS fetched");
                slot.store(Arc::new(fetched));
                every
            }
            Err(e) => {
                tracing::warn!("cannot fetch the JWKS: {e}; retrying in 5 s");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
        if keys.strong_count() == 0 {
            return;
        }
    }
}

/// Compiles the filter. The requirement must be the form Istio writes: one rule for every
/// path, requiring one provider or any of several, possibly allowing a missing token.
pub fn compile_jwt(config: &JwtAuthentication) -> Result<JwtFilter, ConfigError> {
    let mut names: Vec<&String> = config.providers.keys().collect();
    names.sort();
    let unsupported =
        || ConfigError::new("JWT requirement rules other than one rule for every path (prefix /) are not supported");
    let [rule] = config.rules.as_slice() else { return Err(unsupported()) };
    let every_path = rule
        .r#match
        .as_ref()
        .is_some_and(|m| matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p == "/"));
    let Some(requirement_rule::RequirementType::Requires(requires)) = &rule.requirement_type else {
        return Err(unsupported());
    };
    if !every_path {
        return Err(unsupported());
    }
    let (mut used, mut allow_missing, mut allow_failed) = (Vec::new(), false, false);
    let mut read = |r: &JwtRequirement| -> Result<(), ConfigError> {
        match &r.requires_type {
            Some(jwt_requirement::RequiresType::ProviderName(n)) => used.push(n.clone()),
            Some(jwt_requirement::RequiresType::AllowMissing(_)) => allow_missing = true,
            Some(jwt_requirement::RequiresType::AllowMissingOrFailed(_)) => {
                allow_missing = true;
                allow_failed = true;
            }
            _ => return Err(ConfigError::new("a JWT requirement other than provider names and allow_missing")),
        }
        Ok(())
    };
    match &requires.requires_type {
        Some(jwt_requirement::RequiresType::RequiresAny(list)) => {
            for r in &list.requirements {
                read(r)?;
            }
        }
        _ => read(requires)?,
    }
    let mut providers = Vec::new();
    for name in names {
        if used.contains(name) {
            providers.push(provider(name, &config.providers[name])?);
        }
    }
    Ok(JwtFilter { providers, allow_missing, allow_failed })
}

/// The token of a request, and which provider's locations it was found in.
fn find_token(p: &Provider, headers: &HeaderMap, query: Option<&str>) -> Option<(String, Option<HeaderName>)> {
    let defaults = p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty();
    let header_sources: Vec<(HeaderName, &str)> = if defaults {
        vec![(AUTHORIZATION, "Bearer ")]
    } else {
        p.from_headers.iter().map(|(n, prefix)| (n.clone(), prefix.as_str())).collect()
    };
    for (name, prefix) in header_sources {
        if let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok())
            && let Some(token) = v.strip_prefix(prefix)
        {
            return Some((token.trim().to_owned(), Some(name)));
        }
    }
    let params: Vec<&str> =
        if defaults { vec!["access_token"] } else { p.from_params.iter().map(String::as_str).collect() };
    let in_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| params.contains(&k.as_ref())).map(|(_, v)| v.into_owned())
    });
    if let Some(token) = in_query {
        return Some((token, None));
    }
    // Cookies: `Cookie: a=1; session=<token>`.
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| p.from_cookies.iter().any(|name| name == k))
        .map(|(_, v)| (v.to_owned(), None))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Null | Value::Object(_) => Vec::new(),
        other => vec![other.to_string()],
    }
}

impl JwtFilter {
    /// Checks a request: Ok with the token's claims (None when it carried none or a
    /// failed one is allowed), or the reason for a 401. Headers are changed as the
    /// provider says (token removed unless forwarded, payload and claims added).
    pub fn verify(&self, headers: &mut HeaderMap, query: Option<&str>) -> Result<Option<AuthMetadata>, Refusal> {
        // The headers this filter writes never come from the client.
        for p in &self.providers {
            if let Some(h) = &p.payload_header {
                headers.remove(h);
            }
            for (h, _) in &p.claim_headers {
                headers.remove(h);
            }
        }
        let found = self.providers.iter().find_map(|p| find_token(p, headers, query));
        let Some((token, source)) = found else {
            return if self.allow_missing { Ok(None) } else { Err("Jwt is missing") };
        };
        match self.validate(&token) {
            Ok((p, claims)) => {
                if !p.forward
                    && let Some(name) = &source
                {
                    headers.remove(name);
                }
                if let Some(h) = &p.payload_header
                    && let Some(payload) = token.split('.').nth(1)
                    && let Ok(v) = HeaderValue::from_str(payload)
                {
                    headers.insert(h.clone(), v);
                }
                for (h, claim) in &p.claim_headers {
                    let value = claims.get(claim).map(strings).unwrap_or_default().join(",");
                    if let Ok(v) = HeaderValue::from_str(&value)
                        && !value.is_empty()
                    {
                        headers.insert(h.clone(), v);
                    }
                }
                Ok(Some(metadata(&claims)))
            }
            Err(_) if self.allow_failed => Ok(None),
            Err(refusal) => Err(refusal),
        }
    }

    fn validate(&self, token: &str) -> Result<(&Provider, serde_json::Map<String, Value>), Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "Jwt is not in the form of Header.Payload.Signature")?;
        let unverified: serde_json::Map<String, Value> =
            jsonwebtoken::dangerous::insecure_decode(token).map(|d| d.claims).map_err(|_| "Jwt verification fails")?;
        let issuer = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
        let p = self.providers.iter().find(|p| p.issuer == issuer).ok_or("Jwt issuer is not configured")?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&p.issuer]);
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        validation.leeway = 60;
        if p.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&p.audiences);
        }
        let keys = p.keys.load();
        if keys.is_empty() && p.remote.is_some() {
            return Err("Jwks remote fetch is failed");
        }
        let mut last = "Jwt verification fails";
        for (kid, key) in keys.iter() {
            if header.kid.is_some() && kid.is_some() && header.kid != *kid {
                continue;
            }
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok((p, data.claims)),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err("Jwt is expired"),
                        ErrorKind::ImmatureSignature => return Err("Jwt not yet valid"),
                        ErrorKind::InvalidAudience => return Err("Audiences in Jwt are not allowed"),
                        ErrorKind::InvalidIssuer => return Err("Jwt issuer is not configured"),
                        _ => "Jwt verification fails",
                    }
                }
            }
        }
        Err(last)
    }
}

/// Istio's `request.auth.*` attributes of validated claims.
fn metadata(claims: &serde_json::Map<String, Value>) -> AuthMetadata {
    let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = AuthMetadata::new();
    out.insert("request.auth.principal".into(), vec![format!("{}/{}", text("iss"), text("sub"))]);
    if let Some(aud) = claims.get("aud") {
        out.insert("request.auth.audiences".into(), strings(aud));
    }
    if let Some(azp) = claims.get("azp") {
        out.insert("request.auth.presenter".into(), strings(azp));
    }
    for (k, v) in claims {
        out.insert(format!("request.auth.claims.{k}"), strings(v));
    }
    out
}
