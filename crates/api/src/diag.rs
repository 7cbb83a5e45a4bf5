//! Diagnostics: what is wrong, where (file, line, resource, field), and how bad.
//!
//! Codes are Istio's analyzer message codes where one exists, so users can look them up
//! in Istio's documentation; weft's own checks use `WEFT` codes.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::path::FieldPath;

/// How bad a finding is. Only errors make `weft analyze` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Level {
    /// The configuration is wrong and will be rejected or will not work.
    Error,
    /// The configuration is accepted but probably does not do what was meant.
    Warning,
    /// Worth knowing; nothing is wrong.
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// A message code and its default level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// `IST0101` and so on.
    pub id: &'static str,
    /// Istio's name for the message, such as `ReferencedResourceNotFound`.
    pub name: &'static str,
    /// The level the message has unless a check says otherwise.
    pub level: Level,
}

macro_rules! codes {
    ($($konst:ident = $id:literal $name:literal $level:ident;)*) => {
        /// Every message code weft reports.
        pub mod codes {
            use super::{Code, Level};
            $(
                #[doc = concat!("`", $id, "` ", $name)]
                pub const $konst: Code = Code { id: $id, name: $name, level: Level::$level };
            )*
            /// All codes, for documentation and lookups.
            pub const ALL: &[Code] = &[$($konst),*];
        }
    };
}

codes! {
    INTERNAL_ERROR = "IST0001" "InternalError" Error;
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101" "ReferencedResourceNotFound" Error;
    SCHEMA_VALIDATION_ERROR = "IST0106" "SchemaValidationError" Error;
    CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS = "IST0109" "ConflictingMeshGatewayVirtualServiceHosts" Error;
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS = "IST0110" "ConflictingSidecarWorkloadSelectors" Error;
    MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS = "IST0111" "MultipleSidecarsWithoutWorkloadSelectors" Error;
    VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED = "IST0112" "VirtualServiceDestinationPortSelectorRequired" Error;
    NO_MATCHING_WORKLOADS_FOUND = "IST0127" "NoMatchingWorkloadsFound" Warning;
    NO_SERVER_CERT_VERIFICATION_PORT_LEVEL = "IST0129" "NoServerCertificateVerificationPortLevel" Error;
    NO_SERVER_CERT_VERIFICATION_DESTINATION_LEVEL = "IST0128" "NoServerCertificateVerificationDestinationLevel" Error;
    VIRTUAL_SERVICE_UNREACHABLE_RULE = "IST0130" "VirtualServiceUnreachableRule" Warning;
    VIRTUAL_SERVICE_INEFFECTIVE_MATCH = "IST0131" "VirtualServiceIneffectiveMatch" Info;
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY = "IST0132" "VirtualServiceHostNotFoundInGateway" Warning;
    CONFLICTING_GATEWAYS = "IST0145" "ConflictingGateways" Error;
    NOT_SUPPORTED_YET = "WEFT0001" "NotSupportedYet" Warning;
    UNSUPPORTED_KIND = "WEFT0002" "UnsupportedKind" Warning;
    IGNORED_KIND = "WEFT0003" "IgnoredKind" Info;
    YAML_SYNTAX_ERROR = "WEFT0004" "YamlSyntaxError" Error;
    WEIGHTS_NOT_100 = "WEFT0005" "WeightsNotSummingTo100" Info;
    DUPLICATE_RESOURCE = "WEFT0006" "DuplicateResource" Warning;
}

/// Where a resource came from: a file (or `-` for stdin) and the line its document starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// The file name as the user gave it; `-` for stdin.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Which resource a diagnostic is about: `VirtualService default/reviews`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceName {
    /// The kind, as in YAML.
    pub kind: String,
    /// The namespace; empty for cluster-scoped kinds.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() { "<unnamed>" } else { &self.name };
        if self.namespace.is_empty() {
            write!(f, "{} {name}", self.kind)
        } else {
            write!(f, "{} {}/{name}", self.kind, self.namespace)
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Diagnostic {
    /// Error, warning or info.
    pub level: Level,
    /// Istio's (or weft's) message code.
    pub code: &'static str,
    /// The file and line the finding points at.
    pub origin: Option<Origin>,
    /// The resource the finding is about, when there is one.
    pub resource: Option<ResourceName>,
    /// The field the finding is about, when there is one.
    pub path: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl Diagnostic {
    /// A finding at a code's default level.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { level: code.level, code: code.id, origin: None, resource: None, path: None, message: message.into() }
    }

    /// The same finding at another level.
    pub fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// The same finding, pointing at a file and line.
    pub fn at(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The same finding, about a resource.
    pub fn about(mut self, resource: ResourceName) -> Self {
        self.resource = Some(resource);
        self
    }

    /// The same finding, about a field.
    pub fn field(mut self, path: &FieldPath) -> Self {
        self.path = (!path.is_root()).then(|| path.to_string());
        self
    }

    /// Whether this finding is an error.
    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}

/// `file:line: Kind ns/name: path: message`, the form every weft command prints.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_line_resource_field_message() {
        let d = Diagnostic::new(codes::SCHEMA_VALIDATION_ERROR, "must not be negative")
            .at(Origin { file: "examples/x.yaml".into(), line: 14 })
            .about(ResourceName { kind: "VirtualService".into(), namespace: "default".into(), name: "reviews".into() })
            .field(&FieldPath::parse("spec.http[0].route[1].weight"));
        assert_eq!(
            d.to_string(),
            "examples/x.yaml:14: VirtualService default/reviews: spec.http[0].route[1].weight: must not be negative"
        );
        assert!(d.is_error());
    }
}
