//! A resource as users write it: apiVersion, kind, metadata, spec, and where it came from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::diag::{Code, Diagnostic, Origin, ResourceName};
use crate::gateway;
use crate::istio;
use crate::path::FieldPath;
use crate::yaml::LineIndex;

/// The namespace a resource without one lands in, as `kubectl apply` and `istioctl analyze` do.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How far weft goes with a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Parsed, validated and acted on.
    Supported,
    /// Parsed and validated; not acted on yet.
    NotYet,
    /// Recognised and refused: weft will not act on it.
    Unsupported,
    /// Not a mesh resource (Deployment, ConfigMap, ...): read only for context.
    Context,
}

macro_rules! kinds {
    (
        istio { $($ikind:ident($itype:ty) = $isupport:ident;)* }
        gateway { $($gkind:ident = $gname:literal ($gtype:ty) [$($gver:literal),*] $gsupport:ident;)* }
    ) => {
        /// The typed `spec` of a resource, one variant per kind weft models.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Spec {
            $(
                #[doc = concat!("Istio `", stringify!($ikind), "`.")]
                $ikind(Box<$itype>),
            )*
            $(
                #[doc = concat!("Gateway API `", $gname, "`.")]
                $gkind(Box<$gtype>),
            )*
            /// Kubernetes `Service`, read for the hosts and ports it defines.
            Service(Box<k8s_openapi::api::core::v1::ServiceSpec>),
            /// Kubernetes `Namespace`.
            Namespace,
            /// A kind weft recognises but does not model; the raw object is kept.
            Other(Box<serde_json::Value>),
        }

        /// Istio kinds: `(Kind, support)`. Versions and schemas come from Istio's CRDs.
        pub const ISTIO_KINDS: &[(&str, Support)] = &[$((stringify!($ikind), Support::$isupport)),*];

        /// Gateway API kinds weft models: `(Kind, versions, support)`.
        pub const GATEWAY_KINDS: &[(&str, &[&str], Support)] = &[$(($gname, &[$($gver),*], Support::$gsupport)),*];

        /// Deserialises the `spec` of a modelled kind.
        pub(crate) fn typed_spec(kind: &str, spec: serde_json::Value) -> Option<Result<Spec, serde_path_to_error::Error<serde_json::Error>>> {
            match kind {
                $(stringify!($ikind) => Some(serde_path_to_error::deserialize(spec).map(|s| Spec::$ikind(Box::new(s)))),)*
                _ => None,
            }
        }

        /// Deserialises the `spec` of a Gateway API kind.
        pub(crate) fn typed_gateway_spec(kind: &str, spec: serde_json::Value) -> Option<Result<Spec, serde_path_to_error::Error<serde_json::Error>>> {
            match kind {
                $($gname => Some(serde_path_to_error::deserialize(spec).map(|s| Spec::$gkind(Box::new(s)))),)*
                _ => None,
            }
        }
    };
}

kinds! {
    istio {
        VirtualService(istio::VirtualServiceSpec) = Supported;
        DestinationRule(istio::DestinationRuleSpec) = Supported;
        Gateway(istio::GatewaySpec) = Supported;
        ServiceEntry(istio::ServiceEntrySpec) = Supported;
        WorkloadEntry(istio::WorkloadEntrySpec) = Supported;
        WorkloadGroup(istio::WorkloadGroupSpec) = NotYet;
        Sidecar(istio::SidecarSpec) = Supported;
        EnvoyFilter(istio::EnvoyFilterSpec) = Unsupported;
        ProxyConfig(istio::ProxyConfigSpec) = NotYet;
        AuthorizationPolicy(istio::AuthorizationPolicySpec) = Supported;
        PeerAuthentication(istio::PeerAuthenticationSpec) = Supported;
        RequestAuthentication(istio::RequestAuthenticationSpec) = Supported;
        Telemetry(istio::TelemetrySpec) = Supported;
        WasmPlugin(istio::WasmPluginSpec) = Unsupported;
        TrafficExtension(istio::TrafficExtensionSpec) = Unsupported;
    }
    gateway {
        KubeGateway = "Gateway" (gateway::GatewaySpec) ["v1", "v1beta1"] Supported;
        HttpRoute = "HTTPRoute" (gateway::HttpRouteSpec) ["v1", "v1beta1"] Supported;
        GrpcRoute = "GRPCRoute" (gateway::GrpcRouteSpec) ["v1"] Supported;
        ReferenceGrant = "ReferenceGrant" (gateway::ReferenceGrantSpec) ["v1", "v1beta1"] Supported;
    }
}

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Whether an API group is one of the mesh's own (Istio's or the Gateway API's): kinds in
/// these groups that weft does not know are reported, never silently skipped.
pub fn is_mesh_group(group: &str) -> bool {
    group.ends_with(".istio.io") || group == GATEWAY_GROUP
}

/// One resource read from a file.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `group/version`, or `version` for the core group.
    pub api_version: String,
    /// The kind, as in YAML.
    pub kind: String,
    /// Kubernetes object metadata.
    pub meta: Box<ObjectMeta>,
    /// The typed spec.
    pub spec: Spec,
    /// The file and first line of the object.
    pub origin: Origin,
    /// Lines of the object's fields, for diagnostics about them.
    pub lines: LineIndex,
}

impl Resource {
    /// The API group (`networking.istio.io`; empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or("")
    }

    /// The resource's namespace, `default` if it names none.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `Kind namespace/name`, for messages.
    pub fn id(&self) -> ResourceName {
        let namespace = if matches!(self.spec, Spec::Namespace) { String::new() } else { self.namespace().to_owned() };
        ResourceName { kind: self.kind.clone(), namespace, name: self.name().to_owned() }
    }

    /// The file and line of a field of this resource (or of the resource, if the field
    /// is not written out).
    pub fn origin_of(&self, path: &FieldPath) -> Origin {
        let line = self.lines.line_of(path).unwrap_or(self.origin.line);
        Origin { file: self.origin.file.clone(), line }
    }

    /// A diagnostic about a field of this resource.
    pub fn diagnostic(&self, code: Code, path: &FieldPath, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(code, message).at(self.origin_of(path)).about(self.id()).field(path)
    }

    /// The resource's labels.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.meta.labels.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
