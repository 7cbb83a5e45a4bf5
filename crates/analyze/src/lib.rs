//! `weft analyze`: checks across a set of resources, reported with Istio's analyzer
//! message codes (IST0101 ReferencedResourceNotFound, IST0109, IST0110, ...) so users
//! can look them up in Istio's documentation.
//!
//! Analysis is a pure function of the resources: no I/O, no cluster.

mod context;
mod gateway_api;
mod networking;
mod support;
mod workloads;

pub use context::{Context, DOMAIN_SUFFIX, fqdn};

use std::collections::{HashMap, HashSet};

use weft_api::diag::codes;
use weft_api::{Diagnostic, FieldPath, Resource};

/// Every cross-resource finding about `resources`, in file order.
pub fn analyze(resources: &[Resource]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let cx = Context::new(distinct(resources, &mut out));
    networking::check(&cx, &mut out);
    workloads::check(&cx, &mut out);
    gateway_api::check(&cx, &mut out);
    for r in resources {
        support::check(r, &mut out);
    }
    sort(&mut out);
    out
}

/// Each resource once: a resource defined again replaces the earlier definition, as
/// `kubectl apply` would, and both places are reported (WEFT0006), since a mesh whose
/// configuration depends on file order is a mesh waiting to surprise someone.
fn distinct<'a>(resources: &'a [Resource], out: &mut Vec<Diagnostic>) -> Vec<&'a Resource> {
    let mut last: HashMap<(&str, &str, &str, &str), usize> = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(earlier) = last.insert((r.group(), r.kind.as_str(), r.namespace(), r.name()), i) {
            let first = &resources[earlier];
            out.push(r.diagnostic(
                codes::DUPLICATE_RESOURCE,
                &FieldPath::root(),
                format!("{} is also defined at {}; this later definition replaces it", r.id(), first.origin),
            ));
        }
    }
    let keep: HashSet<usize> = last.into_values().collect();
    resources.iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, r)| r).collect()
}

/// Orders findings by file, line, then code, and drops exact repeats.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| (&a.origin, a.code, &a.path, &a.message).cmp(&(&b.origin, b.code, &b.path, &b.message)));
    diagnostics.dedup();
}
