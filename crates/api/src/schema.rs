//! Structural validation of a resource's `spec` against its OpenAPI schema, as the
//! Kubernetes API server does for Istio's CRDs: unknown fields, types, enums, bounds,
//! lengths, patterns, one-of groups and the CRDs' CEL rules.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::cel;
use crate::path::FieldPath;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field at fault.
    pub path: FieldPath,
    /// What is wrong with it.
    pub message: String,
}

/// An Istio kind's schema, from Istio's CRD bundle.
#[derive(Debug, Clone, Deserialize)]
pub struct KindSchema {
    /// API group, such as `networking.istio.io`.
    pub group: String,
    /// Kind, such as `VirtualService`.
    pub kind: String,
    /// Lower-case plural, such as `virtualservices`.
    pub plural: String,
    /// Versions served, such as `["v1", "v1alpha3", "v1beta1"]`.
    pub versions: Vec<String>,
    /// The schema of `spec`.
    pub spec: Value,
}

/// The schemas of every Istio kind, keyed by `group/Kind`.
pub fn istio_schemas() -> &'static HashMap<String, KindSchema> {
    static SCHEMAS: OnceLock<HashMap<String, KindSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        // The file is generated and checked by the tests; failing here is a build defect.
        #[allow(clippy::expect_used)]
        serde_json::from_str(include_str!("istio/schema.json")).expect("istio/schema.json is valid")
    })
}

/// Checks `value` (found at `path`) against `schema`.
pub fn validate(schema: &Value, value: &Value, path: &FieldPath) -> Vec<Violation> {
    let mut out = Vec::new();
    walk(schema, value, path, &mut out);
    out
}

fn walk(schema: &Value, value: &Value, path: &FieldPath, out: &mut Vec<Violation>) {
    let mut fail = |message: String| out.push(Violation { path: path.clone(), message });
    // Kubernetes drops explicit nulls for fields that are not nullable; so do we.
    if value.is_null() {
        return;
    }
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if flag("x-kubernetes-int-or-string") {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            fail(format!("must be an integer or a string, not {}", describe(value)));
        }
        return;
    }
    let open = flag("x-kubernetes-preserve-unknown-fields");
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = value.as_object() else {
                return fail(format!("must be an object, not {}", describe(value)));
            };
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, item) in map {
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => walk(sub, item, &path.field(key), out),
                    (None, Some(sub)) if properties.is_none() => walk(sub, item, &path.key(key), out),
                    (None, _) if open || (properties.is_none() && additional.is_none()) => {}
                    (None, _) => {
                        let known: Vec<&str> =
                            properties.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                        let hint = closest(key, &known).map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default();
                        out.push(Violation { path: path.field(key), message: format!("unknown field{hint}") });
                    }
                }
            }
            for required in
                schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if map.get(required).is_none_or(Value::is_null) {
                    out.push(Violation { path: path.field(required), message: "required field is missing".into() });
                }
            }
            bound(schema, "minProperties", "maxProperties", map.len(), "entries", path, out);
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return fail(format!("must be a list, not {}", describe(value)));
            };
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &path.index(i), out);
                }
            }
            bound(schema, "minItems", "maxItems", items.len(), "items", path, out);
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        out.push(Violation { path: path.index(i), message: "duplicate entry".into() });
                    }
                }
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                return fail(format!("must be a string, not {}", describe(value)));
            };
            if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                && !allowed.iter().any(|a| a.as_str() == Some(text))
            {
                let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                return fail(format!("{text:?} must be one of {}", names.join(", ")));
            }
            bound(schema, "minLength", "maxLength", text.chars().count(), "characters", path, out);
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && !pattern_matches(pattern, text)
            {
                out.push(Violation { path: path.clone(), message: format!("{text:?} must match {pattern}") });
            }
        }
        Some("integer") => {
            let Some(n) = value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from)) else {
                return fail(format!("must be an integer, not {}", describe(value)));
            };
            let (lo, hi) = match schema.get("format").and_then(Value::as_str) {
                Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
                Some("uint32") => (0, i128::from(u32::MAX)),
                _ => (i128::from(i64::MIN), i128::from(u64::MAX)),
            };
            let lo = schema.get("minimum").and_then(Value::as_f64).map_or(lo, |m| lo.max(m.ceil() as i128));
            let hi = schema.get("maximum").and_then(Value::as_f64).map_or(hi, |m| hi.min(m.floor() as i128));
            if n < lo || n > hi {
                return fail(format!("{n} must be {lo}..{hi}"));
            }
        }
        Some("number") if !value.is_number() => {
            return fail(format!("must be a number, not {}", describe(value)));
        }
        Some("boolean") if !value.is_boolean() => {
            return fail(format!("must be true or false, not {}", describe(value)));
        }
        _ => {}
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matched = branches.iter().filter(|b| branch_matches(b, value)).count();
        if matched != 1 {
            let fields = branch_fields(branches);
            let none_allowed = branches.iter().any(|b| b.get("not").is_some());
            out.push(Violation {
                path: path.clone(),
                message: if matched == 0 && !none_allowed {
                    format!("exactly one of {} must be set", fields.join(", "))
                } else {
                    format!("only one of {} may be set", fields.join(", "))
                },
            });
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(|b| branch_matches(b, value))
    {
        out.push(Violation {
            path: path.clone(),
            message: format!("one of {} must be set", branch_fields(branches).join(", ")),
        });
    }
    for rule in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        if cel::check(text, value) == Some(false) {
            let message = rule.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(text);
            // Say why a duration is refused: the rule's own message only says that it is.
            let detail = match value.as_str().map(crate::duration::parse) {
                Some(Err(why)) if text.starts_with("duration(") => format!(" ({why})"),
                _ => String::new(),
            };
            out.push(Violation { path: path.clone(), message: format!("{message}{detail}") });
        }
    }
}

/// Whether a `oneOf`/`anyOf` branch holds. Istio's CRDs use branches of the form
/// `required: [field]` and `not: {anyOf: [{required: [...]}, ...]}`.
fn branch_matches(branch: &Value, value: &Value) -> bool {
    let present = |f: &Value| f.as_str().is_some_and(|f| value.get(f).is_some_and(|v| !v.is_null()));
    let mut holds = true;
    if let Some(required) = branch.get("required").and_then(Value::as_array) {
        holds &= required.iter().all(present);
    }
    if let Some(inner) = branch.get("anyOf").and_then(Value::as_array) {
        holds &= inner.iter().any(|b| branch_matches(b, value));
    }
    if let Some(negated) = branch.get("not") {
        holds &= !branch_matches(negated, value);
    }
    holds
}

fn branch_fields(branches: &[Value]) -> Vec<String> {
    let mut fields: Vec<String> = Vec::new();
    for branch in branches {
        for f in branch.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !fields.iter().any(|x| x == f) {
                fields.push(f.to_owned());
            }
        }
    }
    fields
}

fn bound(
    schema: &Value,
    min_key: &str,
    max_key: &str,
    n: usize,
    unit: &str,
    path: &FieldPath,
    out: &mut Vec<Violation>,
) {
    let n = n as u64;
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
        && n < min
    {
        let message = if min == 1 && unit == "characters" {
            "must not be empty".into()
        } else {
            format!("must have at least {min} {unit}")
        };
        out.push(Violation { path: path.clone(), message });
    }
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
        && n > max
    {
        out.push(Violation { path: path.clone(), message: format!("must have at most {max} {unit}, has {n}") });
    }
}

fn pattern_matches(pattern: &str, text: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let Ok(mut cache) = cache.lock() else { return true };
    let regex = cache.entry(pattern.to_owned()).or_insert_with(|| Regex::new(pattern).ok());
    regex.as_ref().is_none_or(|r| r.is_match(text))
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The known name closest to a misspelt one, if any is close enough to be a typo.
pub fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(1))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_rule(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "x-kubernetes-validations" {
                        for rule in v.as_array().into_iter().flatten() {
                            out.push(rule["rule"].as_str().unwrap_or_default().to_owned());
                        }
                    } else {
                        every_rule(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| every_rule(i, out)),
            _ => {}
        }
    }

    #[test]
    fn every_cel_rule_in_istio_schemas_is_implemented() {
        let mut rules = Vec::new();
        for schema in istio_schemas().values() {
            every_rule(&schema.spec, &mut rules);
        }
        assert!(rules.len() > 30);
        let unknown: Vec<_> = rules.iter().filter(|r| cel::check(r, &Value::Null).is_none()).collect();
        assert!(unknown.is_empty(), "CEL rules with no Rust check: {unknown:#?}");
    }

    #[test]
    fn suggests_the_field_that_was_meant() {
        assert_eq!(closest("rout", &["route", "rewrite", "match"]), Some("route"));
        assert_eq!(closest("zzzzzz", &["route", "rewrite"]), None);
    }
}
