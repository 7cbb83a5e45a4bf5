//! Checks of workload selectors: Sidecar conflicts (IST0110, IST0111) and selectors
//! that match nothing (IST0127).

use std::collections::{BTreeMap, HashMap};

use weft_api::diag::codes;
use weft_api::{Diagnostic, FieldPath, Resource, Spec};

use crate::context::Context;

type Labels = BTreeMap<String, String>;

/// The selector labels of a resource that has one, and the field they sit in.
fn selector(r: &Resource) -> Option<(&'static str, Option<&BTreeMap<String, String>>)> {
    Some(match &r.spec {
        Spec::Sidecar(s) => ("workloadSelector", s.workload_selector.as_ref().map(|w| &w.labels)),
        Spec::AuthorizationPolicy(s) => ("selector", s.selector.as_ref().map(|w| &w.match_labels)),
        Spec::PeerAuthentication(s) => ("selector", s.selector.as_ref().map(|w| &w.match_labels)),
        Spec::RequestAuthentication(s) => ("selector", s.selector.as_ref().map(|w| &w.match_labels)),
        Spec::Telemetry(s) => ("selector", s.selector.as_ref().map(|w| &w.match_labels)),
        Spec::DestinationRule(s) => ("workloadSelector", s.workload_selector.as_ref().map(|w| &w.match_labels)),
        _ => return None,
    })
}

/// Runs the selector checks.
pub fn check(cx: &Context, out: &mut Vec<Diagnostic>) {
    let mut sidecars: HashMap<&str, Vec<(&Resource, Option<&Labels>)>> = HashMap::new();
    for r in &cx.resources {
        let Some((field, labels)) = selector(r) else { continue };
        let labels = labels.filter(|l| !l.is_empty());
        if matches!(r.spec, Spec::Sidecar(_)) {
            sidecars.entry(r.namespace()).or_default().push((r, labels));
        }
        if let Some(labels) = labels
            && cx.has_workloads_in(r.namespace())
            && cx.workloads_matching(r.namespace(), labels).next().is_none()
        {
            let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(r.diagnostic(
                codes::NO_MATCHING_WORKLOADS_FOUND,
                &FieldPath::root().field("spec").field(field),
                format!("No matching workloads for this resource with the following labels: {}", text.join(",")),
            ));
        }
    }
    let mut namespaces: Vec<_> = sidecars.into_iter().collect();
    namespaces.sort_by_key(|(ns, _)| *ns);
    for (ns, list) in namespaces {
        let unselected: Vec<&Resource> = list.iter().filter(|(_, l)| l.is_none()).map(|(r, _)| *r).collect();
        if unselected.len() > 1 {
            let names: Vec<&str> = unselected.iter().map(|r| r.name()).collect();
            for r in &unselected {
                out.push(r.diagnostic(
                    codes::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
                    &FieldPath::root(),
                    format!("The Sidecars [{}] in namespace {ns:?} have no workload selector, which can lead to undefined behavior.", names.join(", ")),
                ));
            }
        }
        let selected: Vec<(&Resource, &BTreeMap<String, String>)> =
            list.iter().filter_map(|(r, l)| Some((*r, (*l)?))).collect();
        let mut reported = std::collections::HashSet::new();
        for (i, (a, la)) in selected.iter().enumerate() {
            for (b, lb) in &selected[i + 1..] {
                let shared = cx
                    .workloads
                    .iter()
                    .find(|w| w.namespace == ns && la.iter().chain(lb.iter()).all(|(k, v)| w.labels.get(k) == Some(v)));
                let what = match shared {
                    Some(w) => format!("workload {}", w.name),
                    None if la == lb => "same workloads (their selectors are identical)".to_owned(),
                    None => continue,
                };
                for r in [a, b] {
                    if reported.insert((r.name().to_owned(), what.clone())) {
                        out.push(r.diagnostic(
                            codes::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                            &FieldPath::root().field("spec").field("workloadSelector"),
                            format!("The Sidecars [{}, {}] in namespace {ns:?} select the {what}, which can lead to undefined behavior.", a.name(), b.name()),
                        ));
                    }
                }
            }
        }
    }
}
