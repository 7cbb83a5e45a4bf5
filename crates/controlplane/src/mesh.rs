//! Istio's MeshConfig, the mesh-wide settings (the `mesh` key of the `istio` ConfigMap,
//! istiod's `--meshConfig` file), as far as weft acts on it: the trust domain and its
//! aliases, auto mTLS, TLS parameters (`meshMTLS`, `tlsDefaults`), access logs
//! (`accessLogFile`, `accessLogEncoding`, `accessLogFormat`, `defaultProviders`,
//! `extensionProviders` with `envoyFileAccessLog`), tracing (`enableTracing`,
//! `defaultConfig.tracing.sampling`, `defaultProviders.tracing`, `extensionProviders`
//! with `opentelemetry`), `discoverySelectors`. Every other field is accepted and
//! reported as not acted on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The settings weft reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// `spiffe://<trust domain>/...` identities (`cluster.local`).
    pub trust_domain: Option<String>,
    /// Other trust domains whose identities count as this one's (a migration's old name).
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    /// Whether clients use mutual TLS to workloads with a sidecar without a
    /// DestinationRule saying so (default true).
    pub enable_auto_mtls: Option<bool>,
    /// TLS parameters of mesh mutual TLS.
    #[serde(rename = "meshMTLS")]
    pub mesh_mtls: Option<TlsConfig>,
    /// TLS parameters of other TLS the proxies originate (DestinationRule SIMPLE and
    /// MUTUAL): ECDH curves and cipher suites.
    pub tls_defaults: Option<TlsConfig>,
    /// Where every proxy writes its access log (`/dev/stdout`); none when empty.
    pub access_log_file: Option<String>,
    /// `TEXT` (the default) or `JSON`.
    pub access_log_encoding: Option<String>,
    /// The text format (Envoy's command operators), instead of Istio's default.
    pub access_log_format: Option<String>,
    /// The providers the Telemetry API uses when a Telemetry names none.
    pub default_providers: Option<DefaultProviders>,
    /// Named providers the Telemetry API refers to.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Whether proxies trace requests when no Telemetry says (default true).
    pub enable_tracing: Option<bool>,
    /// The namespaces this control plane sees (any selector matching a namespace's
    /// labels); none: every namespace. Its proxies and configuration come only from them.
    #[serde(default)]
    pub discovery_selectors: Vec<LabelSelector>,
    /// Proxy defaults; weft reads `tracing.sampling`.
    pub default_config: Option<ProxyDefaults>,
    /// Everything else, not acted on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty one matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// `defaultConfig`, Istio's ProxyConfig for every proxy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyDefaults {
    /// Tracing defaults.
    pub tracing: Option<ProxyTracing>,
    /// Everything else, not acted on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    /// The percentage of requests that start a trace, when a Telemetry gives none (1).
    pub sampling: Option<f64>,
    /// Everything else, not acted on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `defaultProviders`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Providers of access logs.
    #[serde(default)]
    pub access_logging: Vec<String>,
    /// Providers of tracing.
    #[serde(default)]
    pub tracing: Vec<String>,
    /// Everything else, not acted on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One of `extensionProviders`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The name a Telemetry uses.
    pub name: String,
    /// A file access log.
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    /// An OpenTelemetry collector that receives spans over OTLP/gRPC.
    pub opentelemetry: Option<OpenTelemetryProvider>,
    /// Other kinds of provider, not acted on yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `envoyFileAccessLog`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLogProvider {
    /// `/dev/stdout` or a file.
    pub path: Option<String>,
    /// `text` or `labels` (JSON).
    pub log_format: Option<LogFormat>,
}

/// `opentelemetry`: where spans go.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    /// The collector's service host (`otel-collector.observability.svc.cluster.local`).
    pub service: String,
    /// Its OTLP/gRPC port (4317).
    pub port: u16,
    /// Limit on the `http.url` span tag (256).
    pub max_tag_length: Option<u32>,
    /// Everything else (`http`, `resourceDetectors`, `dynatraceSampler`), not acted on.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `logFormat`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogFormat {
    /// A text format.
    pub text: Option<String>,
    /// JSON fields and their operators.
    pub labels: Option<BTreeMap<String, String>>,
}

/// `meshMTLS` / `tlsDefaults`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// `TLSV1_2` or `TLSV1_3`.
    pub min_protocol_version: Option<TlsVersion>,
    /// Key exchange groups, most preferred first (`X25519MLKEM768`, `X25519`, `P-256`, ...).
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    /// TLS 1.2 cipher suites, OpenSSL's names (`ECDHE-ECDSA-AES128-GCM-SHA256`, ...).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

/// A minimum TLS version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// Envoy's default.
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    Tls13,
}

impl MeshConfig {
    /// Whether auto mTLS is on.
    pub fn auto_mtls(&self) -> bool {
        self.enable_auto_mtls.unwrap_or(true)
    }

    /// `defaultProviders.accessLogging`.
    pub fn default_access_log_providers(&self) -> Vec<String> {
        self.default_providers.as_ref().map(|d| d.access_logging.clone()).unwrap_or_default()
    }

    /// The `envoyFileAccessLog` provider `name`: its path, text format and JSON fields.
    #[allow(clippy::type_complexity)]
    pub fn file_access_log_provider(
        &self,
        name: &str,
    ) -> Option<(String, Option<String>, Option<Vec<(String, String)>>)> {
        let p = self.extension_providers.iter().find(|p| p.name == name)?.envoy_file_access_log.as_ref()?;
        let format = p.log_format.clone().unwrap_or_default();
        Some((
            p.path.clone().unwrap_or_else(|| "/dev/stdout".into()),
            format.text,
            format.labels.map(|l| l.into_iter().collect()),
        ))
    }
}

/// Reads a MeshConfig file (YAML or JSON). Errors name the file, line and field.
pub fn load(path: &Path) -> Result<MeshConfig, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut docs = weft_api::yaml::parse_stream(&text);
    let doc = match docs.next() {
        None => return Ok(MeshConfig::default()),
        Some(Err(e)) => return Err(format!("{name}:{}: {}", e.line, e.message)),
        Some(Ok(doc)) => doc,
    };
    let mesh: MeshConfig = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let field = e.path().to_string();
        let line = doc.lines.line_of(&weft_api::FieldPath::parse(&field)).unwrap_or(doc.line);
        format!("{name}:{line}: {field}: {}", e.inner())
    })?;
    Ok(mesh)
}
