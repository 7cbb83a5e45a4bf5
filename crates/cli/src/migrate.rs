//! `weft migrate smcp FILE...`: from an OpenShift Service Mesh 2 `ServiceMeshControlPlane`
//! (maistra.io/v2), with its `ServiceMeshMemberRoll`, to what OpenShift Service Mesh 3
//! runs — an `Istio` resource (sailoperator.io/v1) and the PeerAuthentication that replaces
//! `security.dataPlane.mtls` — and a precheck report.
//!
//! The precheck blocks on what must be turned off in the SMCP before its mesh can move, as
//! Red Hat's migration checklist asks, each with the fix: a version other than v2.6,
//! OpenShift routes for gateways (IOR), SMCP-managed gateways, the built-in Prometheus,
//! Grafana, Kiali and Jaeger, a tracing type other than None, network policy management,
//! federation, MultiTenant mode, and `techPreview` settings. As Red Hat's checker does, a
//! setting left unset counts as the default profile's value (add-ons, Jaeger, gateways and
//! network policies are on by default). Every other field is either carried over to
//! `spec.values` or listed as having no equivalent: none is dropped silently.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Map, Value, json};
use weft_api::FieldPath;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// An OpenShift Service Mesh 2 ServiceMeshControlPlane (and its member roll, and any
    /// federation resources, in the same or other files).
    Smcp(SmcpArgs),
}

#[derive(Debug, clap::Args)]
struct SmcpArgs {
    /// YAML files: the ServiceMeshControlPlane, optionally its ServiceMeshMemberRoll and
    /// the mesh's federation resources.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where to write the resources (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The Istio version of the new control plane (OpenShift Service Mesh 3.0 is 1.24).
    #[arg(long, default_value = "v1.24-latest")]
    istio_version: String,
    /// `RevisionBased` (a new revision beside the old, workloads moved by label: the
    /// canary migration) or `InPlace`.
    #[arg(long, default_value = "RevisionBased")]
    update_strategy: String,
    /// The namespace label that puts a namespace in this mesh (its discovery selector).
    #[arg(long, default_value = "istio-discovery")]
    discovery_label: String,
}

/// One finding of the precheck.
#[derive(Debug, Clone, PartialEq)]
struct Finding {
    /// `spec.gateways.openshiftRoute.enabled`.
    field: String,
    /// Where it is (`file:line`), or the document's line when the field is unset.
    at: String,
    problem: String,
    fix: String,
}

/// What the migration produced.
#[derive(Debug, Default)]
struct Migration {
    resources: Vec<Value>,
    /// What must change before the mesh can move.
    blockers: Vec<Finding>,
    /// Fields with no equivalent in OpenShift Service Mesh 3, left behind.
    dropped: Vec<Finding>,
    /// What to do besides applying the resources.
    steps: Vec<String>,
}

/// A parsed document with where it came from.
struct Doc {
    file: String,
    value: Value,
    lines: weft_api::yaml::LineIndex,
    line: usize,
}

impl Doc {
    fn at(&self, path: &str) -> String {
        let line = self.lines.line_of(&FieldPath::parse(path)).unwrap_or(self.line);
        format!("{}:{line}", self.file)
    }

    fn get(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(&self.value, |v, k| v.get(k))
    }
}

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let What::Smcp(args) = args.what;
    let mut docs = Vec::new();
    for file in &args.files {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for parsed in weft_api::yaml::parse_stream(&text) {
            let d = parsed.map_err(|e| anyhow::anyhow!("{}:{}: {}", file.display(), e.line, e.message))?;
            if !d.value.is_null() {
                docs.push(Doc { file: file.display().to_string(), value: d.value, lines: d.lines, line: d.line });
            }
        }
    }
    let m = migrate(&docs, &args)?;
    let mut text = String::new();
    for r in &m.resources {
        text.push_str("---\n");
        text.push_str(&crate::output::yaml_text(r)?);
    }
    match &args.output {
        Some(path) => std::fs::write(path, &text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    eprint!("{}", report(&m));
    Ok(if m.blockers.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn report(m: &Migration) -> String {
    let mut out = String::new();
    if m.blockers.is_empty() {
        out.push_str("Precheck passed: nothing in the control plane blocks the migration.\n");
    } else {
        out.push_str(&format!("Precheck: {} setting(s) must change before the mesh can move:\n", m.blockers.len()));
        for f in &m.blockers {
            out.push_str(&format!("  ✘ {} ({}): {}\n      fix: {}\n", f.field, f.at, f.problem, f.fix));
        }
    }
    if !m.dropped.is_empty() {
        out.push_str("Not carried over (no equivalent in OpenShift Service Mesh 3):\n");
        for f in &m.dropped {
            out.push_str(&format!("  - {} ({}): {}\n", f.field, f.at, f.problem));
        }
    }
    if !m.steps.is_empty() {
        out.push_str("Then:\n");
        for s in &m.steps {
            out.push_str(&format!("  - {s}\n"));
        }
    }
    out
}

fn kind(d: &Doc) -> (&str, &str) {
    (d.value["apiVersion"].as_str().unwrap_or(""), d.value["kind"].as_str().unwrap_or(""))
}

/// Fields this migration reads, by path under `spec`: carried over, checked, or known to
/// have no equivalent. Anything else is reported as unknown.
const CARRIED: &[&str] = &[
    "version",
    "mode",
    "security.trust.domain",
    "security.trust.additionalDomains",
    "security.dataPlane.mtls",
    "security.dataPlane.automtls",
    "security.controlPlane.mtls",
    "security.controlPlane.tls.minProtocolVersion",
    "security.controlPlane.tls.cipherSuites",
    "security.controlPlane.tls.ecdhCurves",
    "security.manageNetworkPolicy",
    "security.jwksResolverCA",
    "security.certificateAuthority.type",
    "security.certificateAuthority.custom.address",
    "security.certificateAuthority.cert-manager.address",
    "security.identity.thirdParty.audience",
    "tracing.type",
    "tracing.sampling",
    "gateways",
    "addons",
    "techPreview",
    "meshConfig.discoverySelectors",
    "meshConfig.extensionProviders",
    "proxy.networking.trafficControl.outbound.policy",
    "proxy.networking.trafficControl.outbound.includedIPRanges",
    "proxy.networking.trafficControl.outbound.excludedIPRanges",
    "proxy.networking.trafficControl.outbound.excludedPorts",
    "proxy.networking.trafficControl.inbound.includedPorts",
    "proxy.networking.trafficControl.inbound.excludedPorts",
    "proxy.networking.trafficControl.inbound.interceptionMode",
    "proxy.networking.clusterDomain",
    "proxy.networking.connectionTimeout",
    "proxy.networking.maxConnectionAge",
    "proxy.networking.protocol.autoDetect.timeout",
    "proxy.networking.dns.refreshRate",
    "proxy.networking.dns.searchSuffixes",
    "proxy.accessLogging.file.name",
    "proxy.accessLogging.file.format",
    "proxy.accessLogging.file.encoding",
    "proxy.accessLogging.envoyService.enabled",
    "proxy.adminPort",
    "proxy.concurrency",
    "proxy.logging.level",
    "proxy.logging.componentLevels",
    "proxy.injection.autoInject",
    "proxy.injection.alwaysInjectSelector",
    "proxy.injection.neverInjectSelector",
    "proxy.injection.injectedAnnotations",
    "cluster.name",
    "cluster.network",
    "cluster.multiCluster.enabled",
    "cluster.multiCluster.meshNetworks",
    "general.logging.logAsJSON",
    "general.logging.componentLevels",
    "general.validationMessages",
];

/// Fields with no equivalent, and why.
const NO_EQUIVALENT: &[(&str, &str)] = &[
    ("profiles", "OpenShift Service Mesh 2 profiles do not carry over; the Istio resource's `profile` is chosen anew"),
    ("policy", "Mixer-era policy settings have no equivalent"),
    ("telemetry", "Mixer-era telemetry settings have no equivalent (use the Telemetry API)"),
    (
        "runtime",
        "control-plane deployment settings (replicas, resources, placement) go under spec.values.pilot by hand",
    ),
    ("cluster.meshExpansion", "mesh expansion's gateways are not managed by the control plane"),
    ("proxy.networking.initialization", "traffic capture is set up by the Istio CNI plugin (IstioCNI resource)"),
    ("proxy.networking.protocol.autoDetect.inbound", "protocol detection is always on"),
    ("proxy.networking.protocol.autoDetect.outbound", "protocol detection is always on"),
    ("proxy.runtime", "proxy resources and probes go under spec.values.global.proxy by hand"),
    (
        "proxy.accessLogging.envoyService",
        "the access log service's address and TLS go in meshConfig.defaultConfig by hand",
    ),
    ("proxy.envoyMetricsService", "the metrics service goes in meshConfig.defaultConfig by hand"),
    ("security.identity", "workload identity is always the Kubernetes service account"),
    (
        "security.controlPlane.certProvider",
        "istiod's certificate provider is set by spec.values.global.pilotCertProvider",
    ),
    ("security.controlPlane.tls.maxProtocolVersion", "a maximum TLS version is not configurable"),
    ("security.certificateAuthority", "istiod's CA settings (self-signed TTLs, root directory) are not carried over"),
    ("general.logging", "control-plane log settings other than levels and JSON"),
];

fn migrate(docs: &[Doc], args: &SmcpArgs) -> anyhow::Result<Migration> {
    let smcps: Vec<&Doc> = docs.iter().filter(|d| kind(d) == ("maistra.io/v2", "ServiceMeshControlPlane")).collect();
    let smcp = match smcps.as_slice() {
        [one] => *one,
        [] => anyhow::bail!("no ServiceMeshControlPlane (maistra.io/v2) in the files"),
        many => anyhow::bail!("{} ServiceMeshControlPlanes in the files; give one at a time", many.len()),
    };
    let name = smcp.value["metadata"]["name"].as_str().unwrap_or("basic").to_owned();
    let namespace = smcp.value["metadata"]["namespace"].as_str().unwrap_or("istio-system").to_owned();
    let spec = |path: &str| smcp.get(&format!("spec.{path}"));
    let text = |path: &str| spec(path).and_then(Value::as_str);
    let mut m = Migration::default();
    let block = |m: &mut Migration, field: &str, problem: &str, fix: &str| {
        m.blockers.push(Finding {
            field: format!("spec.{field}"),
            at: smcp.at(&format!("spec.{field}")),
            problem: problem.to_owned(),
            fix: fix.to_owned(),
        });
    };
    // Red Hat's checker: unset counts as the default profile's value.
    let off = |path: &str| spec(path).and_then(Value::as_bool) == Some(false);

    // --- precheck ---------------------------------------------------------------------
    if text("version") != Some("v2.6") {
        block(
            &mut m,
            "version",
            &format!("the control plane is {}, not v2.6", text("version").unwrap_or("unset")),
            "upgrade to OpenShift Service Mesh 2.6 (spec.version: v2.6, latest 2.6.z) first",
        );
    }
    if spec("gateways.openshiftRoute.enabled").and_then(Value::as_bool) == Some(true) {
        block(
            &mut m,
            "gateways.openshiftRoute.enabled",
            "IOR creates OpenShift routes for gateways; OpenShift Service Mesh 3 does not",
            "create the Routes yourself, then set spec.gateways.openshiftRoute.enabled: false",
        );
    }
    if !off("gateways.enabled") {
        block(
            &mut m,
            "gateways.enabled",
            "the control plane manages gateways (on unless set to false); OpenShift Service Mesh 3 does not",
            "deploy gateways by gateway injection (a Deployment annotated inject.istio.io/templates: gateway, and a \
             Service), then set spec.gateways.enabled: false",
        );
    }
    for (addon, what, fix) in [
        (
            "prometheus",
            "the built-in Prometheus",
            "scrape with OpenShift user-workload monitoring or your own Prometheus",
        ),
        ("grafana", "the built-in Grafana", "use your own Grafana (OpenShift Service Mesh 3 has none)"),
        ("kiali", "the built-in Kiali", "install Kiali on its own (a Kiali resource)"),
    ] {
        if !off(&format!("addons.{addon}.enabled")) {
            block(
                &mut m,
                &format!("addons.{addon}.enabled"),
                &format!("{what} is on (unless set to false)"),
                &format!("{fix}, then set spec.addons.{addon}.enabled: false"),
            );
        }
    }
    if text("tracing.type") != Some("None") {
        block(
            &mut m,
            "tracing.type",
            &format!(
                "tracing is {} (Jaeger unless set); the control plane will not install a tracer",
                text("tracing.type").unwrap_or("Jaeger")
            ),
            "export to Tempo through OpenTelemetry (meshConfig.extensionProviders and a Telemetry resource), then set \
             spec.tracing.type: None",
        );
    }
    if !off("security.manageNetworkPolicy") {
        block(
            &mut m,
            "security.manageNetworkPolicy",
            "the control plane manages NetworkPolicies (on unless set to false); OpenShift Service Mesh 3 creates none",
            "write the NetworkPolicies you need (not selecting on maistra.io/member-of, which goes away), then set \
             spec.security.manageNetworkPolicy: false",
        );
    }
    if text("mode") != Some("ClusterWide") {
        block(
            &mut m,
            "mode",
            &format!("the control plane is {} (MultiTenant unless set)", text("mode").unwrap_or("MultiTenant")),
            "move to spec.mode: ClusterWide (its member roll becomes discovery selectors), or follow Red Hat's \
             multitenant migration tenant by tenant",
        );
    }
    if let Some(Value::Object(tech)) = spec("techPreview") {
        for key in tech.keys() {
            block(
                &mut m,
                &format!("techPreview.{key}"),
                "a technology preview setting with no equivalent",
                &format!("remove spec.techPreview.{key}"),
            );
        }
    }
    for d in docs.iter().filter(|d| kind(d).0.starts_with("federation.maistra.io/")) {
        m.blockers.push(Finding {
            field: format!("{}/{}", kind(d).1, d.value["metadata"]["name"].as_str().unwrap_or("")),
            at: format!("{}:{}", d.file, d.line),
            problem: "federation does not carry over to OpenShift Service Mesh 3".into(),
            fix: "remove the federation resources (ServiceMeshPeer, ExportedServiceSet, ImportedServiceSet); connect \
                  meshes as a multi-cluster mesh instead"
                .into(),
        });
    }
    if text("security.certificateAuthority.type") == Some("cert-manager") {
        m.steps.push(
            "the CA is cert-manager: follow Red Hat's cert-manager migration steps before moving workloads".into(),
        );
    }

    // --- what carries over ------------------------------------------------------------
    let mut mesh = Map::new();
    let mut global = Map::new();
    let mut proxy = Map::new();
    let mut pilot = Map::new();
    let mut injector = Map::new();
    let mut default_config = Map::new();
    let set = |map: &mut Map<String, Value>, key: &str, from: &str| {
        if let Some(v) = spec(from) {
            map.insert(key.to_owned(), v.clone());
        }
    };
    set(&mut mesh, "trustDomain", "security.trust.domain");
    set(&mut mesh, "trustDomainAliases", "security.trust.additionalDomains");
    let auto = spec("security.dataPlane.automtls").or(spec("security.controlPlane.mtls"));
    if let Some(auto) = auto {
        mesh.insert("enableAutoMtls".into(), auto.clone());
    }
    let mut tls = Map::new();
    // Envoy's names (TLSv1_2) become MeshConfig's (TLSV1_2); MeshConfig has no TLS 1.0 or 1.1.
    let min_tls = "security.controlPlane.tls.minProtocolVersion";
    match spec(min_tls).and_then(Value::as_str) {
        Some(v @ ("TLSv1_2" | "TLSv1_3" | "TLS_AUTO")) => {
            tls.insert("minProtocolVersion".into(), v.replace("TLSv", "TLSV").into());
        }
        Some(v) => m.dropped.push(Finding {
            field: format!("spec.{min_tls}"),
            at: smcp.at(&format!("spec.{min_tls}")),
            problem: format!("{v}: the mesh's minimum TLS version is 1.2 or later"),
            fix: String::new(),
        }),
        None => {}
    }
    set(&mut tls, "cipherSuites", "security.controlPlane.tls.cipherSuites");
    set(&mut tls, "ecdhCurves", "security.controlPlane.tls.ecdhCurves");
    if !tls.is_empty() {
        mesh.insert("tlsDefaults".into(), Value::Object(tls));
    }
    let ca = spec("security.certificateAuthority.custom.address")
        .or(spec("security.certificateAuthority.cert-manager.address"));
    if let Some(address) = ca {
        mesh.insert("ca".into(), json!({"address": address}));
    }
    set(&mut mesh, "extensionProviders", "meshConfig.extensionProviders");
    if let Some(policy) = spec("proxy.networking.trafficControl.outbound.policy") {
        mesh.insert("outboundTrafficPolicy".into(), json!({"mode": policy}));
    }
    set(&mut mesh, "accessLogFile", "proxy.accessLogging.file.name");
    set(&mut mesh, "accessLogFormat", "proxy.accessLogging.file.format");
    set(&mut mesh, "accessLogEncoding", "proxy.accessLogging.file.encoding");
    set(&mut mesh, "enableEnvoyAccessLogService", "proxy.accessLogging.envoyService.enabled");
    set(&mut mesh, "connectTimeout", "proxy.networking.connectionTimeout");
    set(&mut mesh, "protocolDetectionTimeout", "proxy.networking.protocol.autoDetect.timeout");
    set(&mut mesh, "dnsRefreshRate", "proxy.networking.dns.refreshRate");
    set(&mut default_config, "concurrency", "proxy.concurrency");
    set(&mut default_config, "proxyAdminPort", "proxy.adminPort");
    set(&mut default_config, "interceptionMode", "proxy.networking.trafficControl.inbound.interceptionMode");
    if !default_config.is_empty() {
        mesh.insert("defaultConfig".into(), Value::Object(default_config));
    }
    set(&mut proxy, "clusterDomain", "proxy.networking.clusterDomain");
    let join = |v: &Value| match v {
        Value::Array(items) => Value::String(
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned)).collect::<Vec<_>>().join(","),
        ),
        other => other.clone(),
    };
    for (key, from) in [
        ("includeIPRanges", "proxy.networking.trafficControl.outbound.includedIPRanges"),
        ("excludeIPRanges", "proxy.networking.trafficControl.outbound.excludedIPRanges"),
        ("excludeOutboundPorts", "proxy.networking.trafficControl.outbound.excludedPorts"),
        ("includeInboundPorts", "proxy.networking.trafficControl.inbound.includedPorts"),
        ("excludeInboundPorts", "proxy.networking.trafficControl.inbound.excludedPorts"),
    ] {
        if let Some(v) = spec(from) {
            proxy.insert(key.into(), join(v));
        }
    }
    set(&mut proxy, "autoInject", "proxy.injection.autoInject");
    if let Some(levels) = spec("proxy.logging.componentLevels").and_then(log_levels) {
        proxy.insert("componentLogLevel".into(), Value::String(levels));
    }
    if let Some(level) = spec("proxy.logging.level") {
        proxy.insert("logLevel".into(), level.clone());
    }
    if !proxy.is_empty() {
        global.insert("proxy".into(), Value::Object(proxy));
    }
    set(&mut global, "network", "cluster.network");
    set(&mut global, "meshNetworks", "cluster.multiCluster.meshNetworks");
    set(&mut global, "logAsJson", "general.logging.logAsJSON");
    if let Some(levels) = spec("general.logging.componentLevels").and_then(log_levels) {
        global.insert("logging".into(), json!({ "level": levels }));
    }
    if let Some(v) = spec("general.validationMessages") {
        global.insert("istiod".into(), json!({"enableAnalysis": v}));
    }
    if let Some(v) = spec("security.identity.thirdParty.audience") {
        global.insert("sds".into(), json!({"token": {"aud": v}}));
    }
    let mut multi = Map::new();
    set(&mut multi, "clusterName", "cluster.name");
    set(&mut multi, "enabled", "cluster.multiCluster.enabled");
    if !multi.is_empty() {
        global.insert("multiCluster".into(), Value::Object(multi));
    }
    set(&mut pilot, "jwksResolverExtraRootCA", "security.jwksResolverCA");
    set(&mut pilot, "keepaliveMaxServerConnectionAge", "proxy.networking.maxConnectionAge");
    if let Some(sampling) = spec("tracing.sampling").and_then(Value::as_f64) {
        // SMCP counts in hundredths of a percent; Istio in percent.
        pilot.insert("traceSampling".into(), json!(sampling / 100.0));
    }
    if let Some(suffixes) = spec("proxy.networking.dns.searchSuffixes") {
        global.insert("podDNSSearchNamespaces".into(), suffixes.clone());
    }
    set(&mut injector, "alwaysInjectSelector", "proxy.injection.alwaysInjectSelector");
    set(&mut injector, "neverInjectSelector", "proxy.injection.neverInjectSelector");
    set(&mut injector, "injectedAnnotations", "proxy.injection.injectedAnnotations");

    // Membership: the member roll becomes discovery selectors.
    let istio_name = if text("mode") == Some("ClusterWide") { "default".to_owned() } else { name.clone() };
    match spec("meshConfig.discoverySelectors") {
        Some(selectors) => {
            mesh.insert("discoverySelectors".into(), selectors.clone());
        }
        None => membership(docs, &namespace, &istio_name, args, &mut mesh, &mut m),
    }

    let mut values = Map::new();
    for (key, map) in [("meshConfig", mesh), ("global", global), ("pilot", pilot), ("sidecarInjectorWebhook", injector)]
    {
        if !map.is_empty() {
            values.insert(key.into(), Value::Object(map));
        }
    }
    let mut istio = json!({
        "apiVersion": "sailoperator.io/v1",
        "kind": "Istio",
        "metadata": {"name": istio_name},
        "spec": {
            "version": args.istio_version,
            "namespace": namespace,
            "updateStrategy": {"type": args.update_strategy, "inactiveRevisionDeletionGracePeriodSeconds": 30},
        },
    });
    if !values.is_empty() {
        istio["spec"]["values"] = Value::Object(values);
    }
    m.resources.push(istio);
    if spec("security.dataPlane.mtls").and_then(Value::as_bool) == Some(true) {
        m.resources.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": namespace},
            "spec": {"mtls": {"mode": "STRICT"}},
        }));
        let domain = text("proxy.networking.clusterDomain").unwrap_or("cluster.local");
        m.resources.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "api-server", "namespace": namespace},
            "spec": {"host": format!("kubernetes.default.svc.{domain}"), "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
        }));
    }

    // Every other field: known to have no equivalent, or unknown to this migration.
    if let Some(spec) = smcp.value.get("spec") {
        let mut leaves = Vec::new();
        leaf_paths(spec, String::new(), &mut leaves);
        for path in leaves {
            let handled = |p: &str| path == p || path.starts_with(&format!("{p}."));
            if CARRIED.iter().any(|p| handled(p)) {
                continue;
            }
            let at = smcp.at(&format!("spec.{path}"));
            let problem = match NO_EQUIVALENT.iter().find(|(p, _)| handled(p)) {
                Some((_, why)) => (*why).to_owned(),
                None => "not a field this migration knows; check it by hand".to_owned(),
            };
            m.dropped.push(Finding { field: format!("spec.{path}"), at, problem, fix: String::new() });
        }
    }
    m.steps.push(format!(
        "apply the Istio resource: the new control plane ({}) starts beside the old one in {namespace}, sharing its root \
         CA, so old and new workloads keep talking mutual TLS",
        args.istio_version
    ));
    m.steps.push(
        "move each namespace: label it istio.io/rev=<the new revision> and maistra.io/ignore-namespace=true, then \
         restart its workloads"
            .into(),
    );
    Ok(m)
}

/// Per-component log levels as Istio writes them: `ads:debug,default:info`.
fn log_levels(levels: &Value) -> Option<String> {
    let map = levels.as_object()?;
    Some(map.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
}

/// The member roll as discovery selectors: member names as a label every member (and the
/// control plane's namespace) gets, member selectors as they are.
fn membership(
    docs: &[Doc],
    namespace: &str,
    istio: &str,
    args: &SmcpArgs,
    mesh: &mut Map<String, Value>,
    m: &mut Migration,
) {
    let roll = docs.iter().find(|d| {
        kind(d).1 == "ServiceMeshMemberRoll"
            && d.value["metadata"]["namespace"].as_str().unwrap_or(namespace) == namespace
    });
    let Some(roll) = roll else {
        m.steps.push("no ServiceMeshMemberRoll given: the new control plane watches every namespace".into());
        return;
    };
    let members: Vec<&str> =
        roll.get("spec.members").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if members.contains(&"*") {
        m.steps.push("the member roll has \"*\": the new control plane watches every namespace".into());
        return;
    }
    let mut selectors: Vec<Value> = Vec::new();
    if !members.is_empty() {
        let label = &args.discovery_label;
        selectors.push(json!({"matchLabels": {label.as_str(): istio}}));
        let mut namespaces: Vec<&str> = vec![namespace];
        namespaces.extend(members.iter().copied());
        m.steps.push(format!(
            "label the member namespaces and the control plane's: {}",
            namespaces.iter().map(|n| format!("oc label namespace {n} {label}={istio}")).collect::<Vec<_>>().join("; ")
        ));
    }
    if let Some(Value::Array(extra)) = roll.get("spec.memberSelectors") {
        selectors.extend(extra.iter().cloned());
    }
    if !selectors.is_empty() {
        mesh.insert("discoverySelectors".into(), Value::Array(selectors));
    }
}

/// Every leaf of `v` as a dotted path (lists count as leaves).
fn leaf_paths(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(child, path, out);
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.push(prefix);
            }
        }
    }
}
