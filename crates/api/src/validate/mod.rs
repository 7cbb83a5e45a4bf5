//! Istio's semantic validation rules: what the schema cannot say (hosts well-formed,
//! regexes that compile, routes that make sense). These are the checks Istio's
//! admission webhook and `istioctl validate` apply, with the same outcomes.

pub mod gateway;
mod istio;
mod net;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::diag::{Diagnostic, Level, codes};
use crate::path::FieldPath;
use crate::resource::{Resource, Spec};

pub use net::{host_covers, is_dns1123_label, is_dns1123_subdomain, is_ip_or_cidr, is_wildcard_hostname};

/// Problems with an object's metadata: `(field, message)`.
pub fn metadata(meta: &ObjectMeta) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match (meta.name.as_deref(), meta.generate_name.as_deref()) {
        (Some(name), _) if !is_dns1123_subdomain(name) => {
            out.push((
                "name",
                format!(
                    "{name:?} is not a valid name: lower-case letters, digits, '-' and '.', at most 253 characters"
                ),
            ));
        }
        (None | Some(""), None) => out.push(("name", "required field is missing".into())),
        _ => {}
    }
    if let Some(ns) = meta.namespace.as_deref()
        && !is_dns1123_label(ns)
    {
        out.push((
            "namespace",
            format!("{ns:?} is not a valid namespace: lower-case letters, digits and '-', at most 63 characters"),
        ));
    }
    out
}

/// Semantic checks on one resource that passed schema validation.
pub fn resource(resource: &Resource) -> Vec<Diagnostic> {
    let mut f = Findings { resource, out: Vec::new() };
    let spec = FieldPath::root().field("spec");
    match &resource.spec {
        Spec::VirtualService(s) => istio::virtual_service(&mut f, &spec, s),
        Spec::DestinationRule(s) => istio::destination_rule(&mut f, &spec, s),
        Spec::Gateway(s) => istio::gateway(&mut f, &spec, s),
        Spec::ServiceEntry(s) => istio::service_entry(&mut f, &spec, s),
        Spec::WorkloadEntry(s) => istio::workload_entry(&mut f, &spec, s),
        Spec::Sidecar(s) => istio::sidecar(&mut f, &spec, s),
        Spec::AuthorizationPolicy(s) => istio::authorization_policy(&mut f, &spec, s),
        Spec::RequestAuthentication(s) => istio::request_authentication(&mut f, &spec, s),
        Spec::Telemetry(s) => istio::telemetry(&mut f, &spec, s),
        Spec::HttpRoute(s) => gateway::http_route(&mut f, &spec, s),
        Spec::GrpcRoute(s) => gateway::grpc_route(&mut f, &spec, s),
        Spec::KubeGateway(s) => gateway::gateway(&mut f, &spec, s),
        _ => {}
    }
    f.out
}

/// Collects findings about one resource.
pub(crate) struct Findings<'a> {
    resource: &'a Resource,
    out: Vec<Diagnostic>,
}

impl Findings<'_> {
    /// An error that makes the resource invalid (IST0106).
    pub(crate) fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.out.push(self.resource.diagnostic(codes::SCHEMA_VALIDATION_ERROR, path, message));
    }

    /// A warning: accepted, but probably not what was meant.
    pub(crate) fn warn(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.out
            .push(self.resource.diagnostic(codes::SCHEMA_VALIDATION_ERROR, path, message).with_level(Level::Warning));
    }

    /// A finding with its own code.
    pub(crate) fn note(&mut self, code: crate::diag::Code, path: &FieldPath, message: impl Into<String>) {
        self.out.push(self.resource.diagnostic(code, path, message));
    }

    /// Errors unless `regex` compiles as RE2 (the `regex` crate's syntax is RE2's).
    pub(crate) fn regex(&mut self, path: &FieldPath, regex: &str) {
        if let Err(e) = regex::Regex::new(regex) {
            let detail = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
            self.error(path, format!("{regex:?} is not a valid RE2 regular expression: {detail}"));
        }
    }

    /// Errors unless `text` is a Go duration of at least 1ms.
    pub(crate) fn duration(&mut self, path: &FieldPath, text: Option<&str>) {
        if let Some(text) = text {
            match crate::duration::parse(text) {
                Ok(d) if d.as_nanos() < 1_000_000 => self.error(path, "must be a valid duration greater than 1ms"),
                Ok(_) => {}
                Err(e) => self.error(path, e),
            }
        }
    }

    /// Errors unless `value` is a percentage.
    pub(crate) fn percentage(&mut self, path: &FieldPath, value: Option<f64>) {
        if let Some(v) = value
            && !(0.0..=100.0).contains(&v)
        {
            self.error(path, format!("{v} must be 0..100"));
        }
    }
}
