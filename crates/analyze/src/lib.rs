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

use weft_api::{Diagnostic, Resource};

/// Every cross-resource finding about `resources`, in file order.
pub fn analyze(resources: &[Resource]) -> Vec<Diagnostic> {
    let cx = Context::new(resources);
    let mut out = Vec::new();
    networking::check(&cx, &mut out);
    workloads::check(&cx, &mut out);
    gateway_api::check(&cx, &mut out);
    for r in resources {
        support::check(r, &mut out);
    }
    sort(&mut out);
    out
}

/// Orders findings by file, line, then code, and drops exact repeats.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| (&a.origin, a.code, &a.path, &a.message).cmp(&(&b.origin, b.code, &b.path, &b.message)));
    diagnostics.dedup();
}
