//! The CEL rules (`x-kubernetes-validations`) of Istio's CRDs, as Rust.
//!
//! Istio's CRDs carry a few dozen distinct CEL rules. Rather than embed a CEL
//! interpreter, each rule text maps to the check it means; a test proves every rule in
//! the schema is known here, so a CRD update with a new rule fails loudly instead of
//! being skipped.

use std::net::IpAddr;

use serde_json::Value;

use crate::duration;

/// Evaluates the rule named by its exact CEL text against `value`.
/// `None` means the rule is unknown.
pub fn check(rule: &str, value: &Value) -> Option<bool> {
    let has = |field: &str| value.get(field).is_some_and(|v| !v.is_null());
    let count = |fields: &[&str]| fields.iter().filter(|f| has(f)).count();
    let str_field = |field: &str| value.get(field).and_then(Value::as_str).unwrap_or("");
    let text = value.as_str().unwrap_or("");
    let keys = || value.as_object().into_iter().flat_map(|m| m.keys());
    Some(match normalize(rule).as_str() {
        "duration(self) >= duration('1ms')" => duration::parse(text).is_ok_and(|d| d.as_nanos() >= 1_000_000),
        "!self.contains(\"*\")" => !text.contains('*'),
        "self.all(key, key.size() != 0)" => keys().all(|k| !k.is_empty()),
        "self.all(key, !key.contains(\"*\"))" => keys().all(|k| !k.contains('*')),
        "self.size() == 0" => text.is_empty(),
        "self != \"*\"" => text != "*",
        "0 < self && self <= 65535" => value.as_i64().is_some_and(|p| (1..=65535).contains(&p)),
        "self.all(key, 0 < int(key) && int(key) <= 65535)" => {
            keys().all(|k| k.parse::<i64>().is_ok_and(|p| (1..=65535).contains(&p)))
        }
        "self.all(key, size(key) < 63 && key.matches(\"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$\"))" => {
            keys().all(|k| k.len() < 63 && is_dns_label(k))
        }
        "self in [\"\", \"HTTP\", \"HTTPS\"]" => matches!(text, "" | "HTTP" | "HTTPS"),
        "has(self.wasm) != has(self.lua)" => has("wasm") != has("lua"),
        "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => count(&["selector", "targetRefs"]) <= 1,
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(&["selector", "targetRef", "targetRefs"]) <= 1
        }
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(&["workloadSelector", "targetRefs"]) <= 1
        }
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1" => {
            count(&["workloadSelector", "endpoints"]) <= 1
        }
        "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1"
        | "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1" => {
            count(&["tlsCertificates", "credentialNames"]) <= 1
        }
        "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1" => {
            count(&["credentialName", "credentialNames"]) <= 1
        }
        "(has(self.jwksUri) ? 1 : 0) + (has(self.jwks_uri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1" => {
            count(&["jwksUri", "jwks_uri", "jwks"]) <= 1
        }
        "has(self.context) ? ((self.context == \"WAYPOINT\") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)" => {
            (str_field("context") == "WAYPOINT") == has("waypoint")
        }
        "(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\" || !has(self.value)" => {
            str_field("valueFrom") != "HOST" || !has("value")
        }
        "!((has(self.addresses) ? self.addresses : []).exists(k, k.contains(\"/\")) && !((has(self.resolution) ? self.resolution : \"NONE\") in [\"STATIC\", \"NONE\"]))" =>
        {
            let cidr = value
                .get("addresses")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|k| k.as_str().is_some_and(|s| s.contains('/'))));
            let resolution = if has("resolution") { str_field("resolution") } else { "NONE" };
            !cidr || matches!(resolution, "STATIC" | "NONE")
        }
        "((has(self.resolution) ? self.resolution : \"NONE\") == \"NONE\") ? !has(self.endpoints) : true" => {
            let resolution = if has("resolution") { str_field("resolution") } else { "NONE" };
            resolution != "NONE" || !has("endpoints")
        }
        "((has(self.resolution) ? self.resolution : \"\") == \"DNS_ROUND_ROBIN\") ? ((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true" => {
            str_field("resolution") != "DNS_ROUND_ROBIN"
                || value.get("endpoints").and_then(Value::as_array).is_none_or(|e| e.len() <= 1)
        }
        "has(self.address) || has(self.network)" => has("address") || has("network"),
        "(has(self.address) ? self.address : \"\").startsWith(\"unix://\") ? !has(self.ports) : true" => {
            !str_field("address").starts_with("unix://") || !has("ports")
        }
        "self.startsWith(\"unix://\") ? (self.substring(7, 8) == \"/\" || self.substring(7, 8) == \"@\") : true" => {
            text.strip_prefix("unix://").is_none_or(|p| p.starts_with('/') || p.starts_with('@'))
        }
        "self.startsWith(\"unix://\") ? !self.endsWith(\"/\") : true" => {
            !text.starts_with("unix://") || !text.ends_with('/')
        }
        "self.all(l1, self.exists_one(l2, l1.number == l2.number))" => {
            let numbers: Vec<_> = value.as_array().into_iter().flatten().map(|p| p.get("number")).collect();
            numbers.iter().all(|n| numbers.iter().filter(|m| *m == n).count() == 1)
        }
        "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && !has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true" => {
            !(has("serviceAccounts") || has("notServiceAccounts"))
                || count(&["principals", "notPrincipals", "namespaces", "notNamespaces"]) == 0
        }
        "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true" => {
            !has("portLevelMtls")
                || value.pointer("/selector/matchLabels").and_then(Value::as_object).is_some_and(|m| !m.is_empty())
        }
        "url(self).getScheme() in [\"http\", \"https\"]" => text.starts_with("http://") || text.starts_with("https://"),
        "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"file\", \"oci\"]) : (isURL(\"http://\" + self) && url(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", \"file\", \"oci\"])"
        | "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"]) : (isURL(\"http://\" + self) && url(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"])" => {
            match text.split_once("://") {
                Some((scheme, rest)) => matches!(scheme, "http" | "https" | "file" | "oci") && !rest.is_empty(),
                None => !text.is_empty() && !text.contains(char::is_whitespace),
            }
        }
        "((has(self.operation) ? self.operation : \"\") == \"UPSERT\") ? (self.value != \"\") : true" => {
            str_field("operation") != "UPSERT" || !str_field("value").is_empty()
        }
        "((has(self.operation) ? self.operation : \"\") == \"REMOVE\") ? !has(self.value) : true" => {
            str_field("operation") != "REMOVE" || !has("value")
        }
        _ => return None,
    })
}

/// CEL text with its line breaks folded, as YAML folding may have split it.
fn normalize(rule: &str) -> String {
    rule.split_whitespace().collect::<Vec<_>>().join(" ").replace("( ", "(").replace(" )", ")")
}

/// A DNS-1123 label: lower or upper case letters, digits and `-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is an IP address (v4 or v6).
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}
