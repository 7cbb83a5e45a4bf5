//! Text to resources: YAML/JSON streams, `List` objects, kind dispatch, schema and
//! semantic validation. Nothing here does I/O; callers hand in the text and its name.

use std::sync::Arc;

use serde_json::Value;

use crate::diag::{Diagnostic, Origin, ResourceName, codes};
use crate::path::FieldPath;
use crate::resource::{self, GATEWAY_GROUP, GATEWAY_KINDS, ISTIO_KINDS, Resource, Spec, Support};
use crate::schema;
use crate::validate;
use crate::yaml::{self, LineIndex};

/// What a file held: the resources that passed validation, and every finding.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Resources that would be admitted (no error was found in them).
    pub resources: Vec<Resource>,
    /// Errors, warnings and notes, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// Adds another file's results to these.
    pub fn extend(&mut self, other: Parsed) {
        self.resources.extend(other.resources);
        self.diagnostics.extend(other.diagnostics);
    }

    /// Whether any error was found.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Top-level fields every Kubernetes object may have.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// Parses every object in `text`, a YAML or JSON stream read from `file` (`-` for stdin).
pub fn parse_text(file: &str, text: &str) -> Parsed {
    let file: Arc<str> = Arc::from(file);
    let mut parsed = Parsed::default();
    for doc in yaml::parse_stream(text) {
        match doc {
            Ok(doc) => {
                if doc.value.is_null() {
                    continue;
                }
                let origin = Origin { file: file.clone(), line: doc.line };
                parse_object(doc.value, doc.lines, origin, &mut parsed);
            }
            Err(e) => parsed.diagnostics.push(
                Diagnostic::new(codes::YAML_SYNTAX_ERROR, format!("YAML syntax error: {}", e.message))
                    .at(Origin { file: file.clone(), line: e.line }),
            ),
        }
    }
    parsed
}

fn parse_object(value: Value, lines: LineIndex, origin: Origin, parsed: &mut Parsed) {
    let at = |path: &FieldPath| Origin { file: origin.file.clone(), line: lines.line_of(path).unwrap_or(origin.line) };
    let root = FieldPath::root();
    let Value::Object(mut object) = value else {
        parsed.diagnostics.push(
            Diagnostic::new(
                codes::SCHEMA_VALIDATION_ERROR,
                "not a Kubernetes object: expected a mapping with apiVersion, kind and metadata",
            )
            .at(origin),
        );
        return;
    };
    let text = |object: &serde_json::Map<String, Value>, key: &str| {
        object.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
    };
    let kind = text(&object, "kind");
    let api_version = text(&object, "apiVersion");
    if kind.is_empty() || api_version.is_empty() {
        let missing = if kind.is_empty() { "kind" } else { "apiVersion" };
        parsed.diagnostics.push(
            Diagnostic::new(codes::SCHEMA_VALIDATION_ERROR, "required field is missing")
                .at(at(&root))
                .field(&root.field(missing)),
        );
        return;
    }
    if kind.ends_with("List") && object.get("items").is_some_and(Value::is_array) {
        let items = object
            .remove("items")
            .and_then(|v| if let Value::Array(a) = v { Some(a) } else { None })
            .unwrap_or_default();
        for (i, item) in items.into_iter().enumerate() {
            let path = root.field("items").index(i);
            let item_origin = at(&path);
            parse_object(item, lines.subtree(&path), item_origin, parsed);
        }
        return;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let (group, version) = (group.to_owned(), version.to_owned());

    let meta_value = object.get("metadata").cloned().unwrap_or(Value::Null);
    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta = match serde_json::from_value(meta_value) {
        Ok(meta) => meta,
        Err(e) => {
            parsed.diagnostics.push(
                Diagnostic::new(codes::SCHEMA_VALIDATION_ERROR, format!("invalid metadata: {e}"))
                    .at(at(&root.field("metadata")))
                    .field(&root.field("metadata")),
            );
            return;
        }
    };
    let id = ResourceName {
        kind: kind.clone(),
        namespace: if kind == "Namespace" {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_else(|| resource::DEFAULT_NAMESPACE.into())
        },
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut findings: Vec<Diagnostic> = Vec::new();
    let mut report = |code, path: &FieldPath, message: String| {
        findings.push(Diagnostic::new(code, message).at(at(path)).about(id.clone()).field(path));
    };

    let mesh = resource::is_mesh_group(&group);
    if mesh {
        for key in object.keys().filter(|k| !OBJECT_FIELDS.contains(&k.as_str())) {
            report(codes::SCHEMA_VALIDATION_ERROR, &root.field(key), "unknown field".into());
        }
        for problem in validate::metadata(&meta) {
            report(codes::SCHEMA_VALIDATION_ERROR, &root.field("metadata").field(problem.0), problem.1);
        }
    }
    let spec_path = root.field("spec");
    let spec_value = object.remove("spec").unwrap_or_else(|| Value::Object(Default::default()));

    let spec = if group.ends_with(".istio.io") {
        let schema = schema::istio_schemas().get(&format!("{group}/{kind}"));
        match schema {
            None => {
                let known: Vec<&str> =
                    schema::istio_schemas().values().filter(|s| s.group == group).map(|s| s.kind.as_str()).collect();
                let hint = schema::closest(&kind, &known).map(|k| format!(" (did you mean {k}?)")).unwrap_or_default();
                report(
                    codes::SCHEMA_VALIDATION_ERROR,
                    &root.field("kind"),
                    format!("{group} has no kind {kind}{hint}"),
                );
                None
            }
            Some(schema) if !schema.versions.contains(&version) => {
                report(
                    codes::SCHEMA_VALIDATION_ERROR,
                    &root.field("apiVersion"),
                    format!("{kind} is not served at {api_version}; use {group}/{}", schema.versions.join(" or ")),
                );
                None
            }
            Some(schema) => {
                let violations = schema::validate(&schema.spec, &spec_value, &spec_path);
                let clean = violations.is_empty();
                for v in violations {
                    report(codes::SCHEMA_VALIDATION_ERROR, &v.path, v.message);
                }
                if clean { typed(resource::typed_spec(&kind, spec_value), &spec_path, &mut report) } else { None }
            }
        }
    } else if group == GATEWAY_GROUP {
        match GATEWAY_KINDS.iter().find(|(k, _, _)| *k == kind) {
            None => {
                report(codes::NOT_SUPPORTED_YET, &root, format!("{kind} is not supported yet; it is ignored"));
                None
            }
            Some((_, versions, _)) if !versions.contains(&version.as_str()) => {
                report(
                    codes::SCHEMA_VALIDATION_ERROR,
                    &root.field("apiVersion"),
                    format!("{kind} is not served at {api_version}; use {GATEWAY_GROUP}/{}", versions.join(" or ")),
                );
                None
            }
            Some(_) => {
                let original = spec_value.clone();
                let spec = typed(resource::typed_gateway_spec(&kind, spec_value), &spec_path, &mut report);
                if let Some(spec) = &spec {
                    for path in validate::gateway::unknown_fields(spec, &original, &spec_path) {
                        report(codes::SCHEMA_VALIDATION_ERROR, &path, "unknown field".into());
                    }
                }
                spec
            }
        }
    } else if group.is_empty() && version == "v1" && kind == "Service" {
        serde_json::from_value(spec_value).ok().map(|s| Spec::Service(Box::new(s)))
    } else if group.is_empty() && version == "v1" && kind == "Namespace" {
        Some(Spec::Namespace)
    } else {
        object.insert("spec".into(), spec_value);
        Some(Spec::Other(Box::new(Value::Object(object))))
    };

    let Some(spec) = spec else {
        parsed.diagnostics.extend(findings);
        return;
    };
    let resource = Resource { api_version, kind, meta: Box::new(meta), spec, origin, lines };
    if mesh {
        findings.extend(validate::resource(&resource));
        findings.extend(support_note(&resource));
    }
    let admitted = !findings.iter().any(Diagnostic::is_error);
    parsed.diagnostics.extend(findings);
    if admitted {
        parsed.resources.push(resource);
    }
}

fn typed(
    result: Option<Result<Spec, serde_path_to_error::Error<serde_json::Error>>>,
    spec_path: &FieldPath,
    report: &mut impl FnMut(crate::diag::Code, &FieldPath, String),
) -> Option<Spec> {
    match result? {
        Ok(spec) => Some(spec),
        Err(e) => {
            let path = FieldPath::parse(&e.path().to_string()).under(spec_path);
            let message = e.inner().to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            report(codes::SCHEMA_VALIDATION_ERROR, &path, message);
            None
        }
    }
}

fn support_note(resource: &Resource) -> Option<Diagnostic> {
    let support = ISTIO_KINDS
        .iter()
        .find(|(k, _)| *k == resource.kind && resource.group().ends_with(".istio.io"))
        .map(|(_, s)| *s)
        .or_else(|| {
            GATEWAY_KINDS
                .iter()
                .find(|(k, _, _)| *k == resource.kind && resource.group() == GATEWAY_GROUP)
                .map(|(_, _, s)| *s)
        })?;
    let root = FieldPath::root();
    match support {
        Support::Unsupported => Some(resource.diagnostic(
            codes::UNSUPPORTED_KIND,
            &root,
            format!(
                "{} is not supported: weft does not apply it, and traffic will behave as if it were absent",
                resource.kind
            ),
        )),
        Support::NotYet => Some(resource.diagnostic(
            codes::NOT_SUPPORTED_YET,
            &root,
            format!("{} is not supported yet: it is validated but not acted on", resource.kind),
        )),
        Support::Supported | Support::Context => None,
    }
}
