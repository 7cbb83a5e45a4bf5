#!/usr/bin/env python3
"""Generate weft's Istio API model from Istio's published CRD bundle.

Reads `crd-all.gen.yaml` (Istio's CustomResourceDefinitions) and writes:

* `crates/api/src/istio/schema.json`: each kind's `spec` schema, descriptions
  stripped, with the versions it is served at. The validator walks user input
  against it, so every field, enum, bound and one-of group Istio declares is checked.
* `crates/api/src/istio/types.rs`: serde types for every kind's `spec`.

Usage: scripts/gen-istio-api.py ../shared/istio-crds/crd-all.gen.yaml
Re-run it when Istio's CRDs change and review the diff.
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "crates" / "api" / "src" / "istio"

# Istio's protobuf message names for the schema nodes users talk about, keyed by
# "Kind.field.path" (array items and map values are transparent). Nodes not listed
# are named after their parent and field.
NAMES = {
    "VirtualService.http": "HttpRoute",
    "VirtualService.http.match": "HttpMatchRequest",
    "VirtualService.http.match.uri": "StringMatch",
    "VirtualService.http.route": "HttpRouteDestination",
    "VirtualService.http.route.destination": "Destination",
    "VirtualService.http.route.destination.port": "PortSelector",
    "VirtualService.http.redirect": "HttpRedirect",
    "VirtualService.http.directResponse": "HttpDirectResponse",
    "VirtualService.http.directResponse.body": "HttpBody",
    "VirtualService.http.delegate": "Delegate",
    "VirtualService.http.rewrite": "HttpRewrite",
    "VirtualService.http.rewrite.uriRegexRewrite": "RegexRewrite",
    "VirtualService.http.retries": "HttpRetry",
    "VirtualService.http.fault": "HttpFaultInjection",
    "VirtualService.http.fault.delay": "FaultDelay",
    "VirtualService.http.fault.abort": "FaultAbort",
    "VirtualService.http.fault.abort.percentage": "Percent",
    "VirtualService.http.mirrors": "HttpMirrorPolicy",
    "VirtualService.http.corsPolicy": "CorsPolicy",
    "VirtualService.http.headers": "Headers",
    "VirtualService.http.headers.request": "HeaderOperations",
    "VirtualService.tls": "TlsRoute",
    "VirtualService.tls.match": "TlsMatchAttributes",
    "VirtualService.tls.route": "RouteDestination",
    "VirtualService.tcp": "TcpRoute",
    "VirtualService.tcp.match": "L4MatchAttributes",
    "DestinationRule.trafficPolicy": "TrafficPolicy",
    "DestinationRule.trafficPolicy.loadBalancer": "LoadBalancerSettings",
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash": "ConsistentHashLb",
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.httpCookie": "HttpCookie",
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting": "LocalityLoadBalancerSetting",
    "DestinationRule.trafficPolicy.loadBalancer.warmup": "WarmupConfiguration",
    "DestinationRule.trafficPolicy.connectionPool": "ConnectionPoolSettings",
    "DestinationRule.trafficPolicy.connectionPool.tcp": "TcpSettings",
    "DestinationRule.trafficPolicy.connectionPool.tcp.tcpKeepalive": "TcpKeepalive",
    "DestinationRule.trafficPolicy.connectionPool.http": "HttpSettings",
    "DestinationRule.trafficPolicy.outlierDetection": "OutlierDetection",
    "DestinationRule.trafficPolicy.tls": "ClientTlsSettings",
    "DestinationRule.trafficPolicy.portLevelSettings": "PortTrafficPolicy",
    "DestinationRule.trafficPolicy.tunnel": "TunnelSettings",
    "DestinationRule.trafficPolicy.proxyProtocol": "ProxyProtocol",
    "DestinationRule.subsets": "Subset",
    "DestinationRule.trafficPolicy.loadBalancer.simple": "SimpleLb",
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.ringHash": "RingHash",
    "DestinationRule.trafficPolicy.loadBalancer.consistentHash.maglev": "Maglev",
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.distribute": "LocalityDistribute",
    "DestinationRule.trafficPolicy.loadBalancer.localityLbSetting.failover": "LocalityFailover",
    "DestinationRule.trafficPolicy.tls.mode": "ClientTlsMode",
    "DestinationRule.trafficPolicy.connectionPool.http.h2UpgradePolicy": "H2UpgradePolicy",
    "DestinationRule.trafficPolicy.retryBudget": "RetryBudget",
    "Gateway.servers.tls.mode": "ServerTlsMode",
    "Gateway.servers.tls.maxProtocolVersion": "TlsProtocolVersion",
    "EnvoyFilter.workloadSelector": "WorkloadLabelSelector",
    "ServiceEntry.resolution": "Resolution",
    "ServiceEntry.location": "Location",
    "AuthorizationPolicy.action": "AuthorizationAction",
    "PeerAuthentication.mtls.mode": "MtlsMode",
    "Sidecar.egress.captureMode": "CaptureMode",
    "DestinationRule.workloadSelector": "WorkloadSelector",
    "Gateway.servers": "Server",
    "Gateway.servers.port": "ServerPort",
    "Gateway.servers.tls": "ServerTlsSettings",
    "ServiceEntry.ports": "ServicePort",
    "ServiceEntry.endpoints": "WorkloadEntrySpec",
    "Sidecar.egress": "IstioEgressListener",
    "Sidecar.egress.port": "SidecarPort",
    "Sidecar.ingress": "IstioIngressListener",
    "Sidecar.ingress.connectionPool": "ConnectionPoolSettings",
    "Sidecar.ingress.tls": "ServerTlsSettings",
    "Sidecar.outboundTrafficPolicy": "OutboundTrafficPolicy",
    "Sidecar.inboundConnectionPool": "ConnectionPoolSettings",
    "AuthorizationPolicy.rules": "Rule",
    "AuthorizationPolicy.rules.from": "RuleFrom",
    "AuthorizationPolicy.rules.from.source": "Source",
    "AuthorizationPolicy.rules.to": "RuleTo",
    "AuthorizationPolicy.rules.to.operation": "Operation",
    "AuthorizationPolicy.rules.when": "Condition",
    "AuthorizationPolicy.selector": "WorkloadSelector",
    "AuthorizationPolicy.targetRef": "PolicyTargetReference",
    "AuthorizationPolicy.provider": "ExtensionProvider",
    "PeerAuthentication.mtls": "MutualTls",
    "PeerAuthentication.portLevelMtls.*": "MutualTls",
    "RequestAuthentication.jwtRules": "JwtRule",
    "RequestAuthentication.jwtRules.fromHeaders": "JwtHeader",
    "RequestAuthentication.jwtRules.outputClaimToHeaders": "ClaimToHeader",
    "Telemetry.tracing": "Tracing",
    "Telemetry.tracing.providers": "ProviderRef",
    "Telemetry.tracing.customTags.*": "CustomTag",
    "Telemetry.tracing.match": "TracingSelector",
    "Telemetry.metrics": "Metrics",
    "Telemetry.metrics.overrides": "MetricsOverrides",
    "Telemetry.metrics.overrides.match": "MetricSelector",
    "Telemetry.metrics.overrides.tagOverrides.*": "TagOverride",
    "Telemetry.accessLogging": "AccessLogging",
    "Telemetry.accessLogging.filter": "AccessLoggingFilter",
    "Telemetry.accessLogging.match": "LogSelector",
    "EnvoyFilter.configPatches": "EnvoyConfigObjectPatch",
    "WorkloadGroup.metadata": "ObjectMetadata",
    "WorkloadGroup.template": "WorkloadEntrySpec",
    "WorkloadGroup.probe": "ReadinessProbe",
}

KEYWORDS = {"type", "match", "ref", "mod", "use", "fn", "impl", "loop", "move", "self", "static", "struct", "trait", "where", "async", "await", "dyn", "abstract", "box", "final", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "as", "in", "for", "if", "else", "enum", "crate", "const", "extern", "false", "true", "let", "mut", "pub", "return", "super", "while", "break", "continue", "unsafe"}

KEEP = {"type", "properties", "items", "additionalProperties", "enum", "format", "minimum", "maximum",
        "minLength", "maxLength", "minItems", "maxItems", "pattern", "required", "oneOf", "anyOf",
        "not", "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
        "x-kubernetes-validations", "x-kubernetes-list-type", "maxProperties", "minProperties"}


def trim(schema):
    """The schema without descriptions or anything the validator does not read."""
    if isinstance(schema, list):
        return [trim(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key not in KEEP:
            continue
        if key == "properties":
            out[key] = {name: trim(sub) for name, sub in value.items()}
        elif key == "x-kubernetes-validations":
            out[key] = [{"rule": v["rule"], "message": v.get("message", "")} for v in value]
        elif key in ("enum", "required"):
            out[key] = value
        else:
            out[key] = trim(value)
    return out


def pascal(name):
    parts = re.split(r"[_\-./ ]+|(?<=[a-z0-9])(?=[A-Z])", name)
    return "".join(p[:1].upper() + p[1:].lower() for p in parts if p)


def snake(name):
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).replace("-", "_").lower()
    return "r#" + s if s in KEYWORDS else s


def shape(schema):
    """A hashable description of how a schema maps to Rust, ignoring validation."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return ("any",)
    t = schema.get("type")
    if t == "object":
        if "properties" in schema:
            return ("obj", tuple((k, shape(v), k in schema.get("required", [])) for k, v in sorted(schema["properties"].items())))
        if "additionalProperties" in schema:
            return ("map", shape(schema["additionalProperties"]))
        return ("any",)
    if t == "array":
        return ("arr", shape(schema.get("items", {})))
    if t == "string" and "enum" in schema:
        return ("enum", tuple(schema["enum"]))
    if t in ("string", "boolean", "number"):
        return (t,)
    if t == "integer":
        return ("int", int_type(schema))
    return ("any",)


def int_type(schema):
    fmt = schema.get("format")
    if fmt == "int32":
        return "i32"
    if fmt == "uint32":
        return "u32"
    if fmt == "uint64":
        return "u64"
    if fmt == "int64":
        return "i64"
    if schema.get("minimum", -1) >= 0 and schema.get("maximum", 1 << 40) <= 4294967295:
        return "u32"
    return "i64"


class Model:
    def __init__(self):
        self.names = {}      # shape -> name
        self.overridden = set()
        self.taken = {}      # name -> shape
        self.docs = {}       # shape -> doc
        self.order = []      # shapes in first-seen order
        self.preferred = {}  # shape -> overriding name, from a first pass over all kinds

    def prefer(self, schema, path):
        """First pass: note the name each overridden shape must carry, wherever met first."""
        shp = shape(schema)
        if path in NAMES:
            self.preferred.setdefault(shp, NAMES[path])
        if shp[0] == "obj":
            for prop, sub in schema["properties"].items():
                self.prefer(sub, f"{path}.{prop}")
        elif shp[0] == "map":
            self.prefer(schema["additionalProperties"], f"{path}.*")
        elif shp[0] == "arr":
            self.prefer(schema.get("items", {}), path)

    def name_for(self, shp, candidate, is_override, doc):
        if shp in self.preferred:
            candidate, is_override = self.preferred[shp], True
        if shp in self.names:
            current = self.names[shp]
            if is_override and current not in self.overridden and candidate not in self.taken:
                del self.taken[current]
                self.names[shp] = candidate
                self.taken[candidate] = shp
                self.overridden.add(candidate)
            return self.names[shp]
        name = candidate
        n = 2
        while name in self.taken and self.taken[name] != shp:
            name = f"{candidate}{n}"
            n += 1
        self.names[shp] = name
        self.taken[name] = shp
        if is_override:
            self.overridden.add(name)
        self.docs[shp] = doc
        self.order.append(shp)
        return name

    def visit(self, schema, path, parent_name, field, doc=""):
        shp = shape(schema)
        kind = shp[0]
        if kind == "obj":
            key = path
            candidate = NAMES.get(key)
            self.name_for(shp, candidate or parent_name + pascal(field), candidate is not None, doc or schema_doc(schema))
            me = self.names[shp]
            for prop, sub in schema["properties"].items():
                self.visit(sub, f"{path}.{prop}", me, prop, sub.get("description", ""))
        elif kind == "map":
            self.visit(schema["additionalProperties"], f"{path}.*", parent_name, field + "Value", doc)
        elif kind == "arr":
            self.visit(schema.get("items", {}), path, parent_name, field, doc)
        elif kind == "enum":
            candidate = NAMES.get(path)
            self.name_for(shp, candidate or parent_name + pascal(field), candidate is not None, doc)

    def rust(self, schema):
        shp = shape(schema)
        return self.rust_shape(shp)

    def rust_shape(self, shp):
        kind = shp[0]
        if kind in ("obj", "enum"):
            return self.names[shp]
        if kind == "map":
            return f"BTreeMap<String, {self.rust_shape(shp[1])}>"
        if kind == "arr":
            return f"Vec<{self.rust_shape(shp[1])}>"
        if kind == "string":
            return "String"
        if kind == "boolean":
            return "bool"
        if kind == "number":
            return "f64"
        if kind == "int":
            return shp[1]
        return "serde_json::Value"


def schema_doc(schema):
    return schema.get("description", "")


def doc_lines(text, indent=""):
    text = (text or "").strip()
    if not text:
        return ""
    para = text.split("\n\n")[0]
    para = " ".join(para.split())
    para = para.replace("```", "")
    return f"{indent}/// {para}\n"


def variant(value):
    v = pascal(re.sub(r"[^A-Za-z0-9_]", "_", value)) or "Empty"
    if v[0].isdigit():
        v = "V" + v
    return v


def emit(model, shapes_by_kind, kinds):
    out = []
    out.append("// @generated by scripts/gen-istio-api.py from Istio's CRD bundle. Do not edit.\n")
    out.append("//! Serde types for the `spec` of every Istio kind, generated from Istio's CRDs.\n")
    out.append("//!\n//! Field names follow the Kubernetes JSON form (camelCase). Every object field is\n")
    out.append("//! optional, as in protobuf; lists and maps default to empty.\n\n")
    out.append("#![allow(missing_docs, clippy::doc_markdown, clippy::large_enum_variant)]\n")
    out.append("#![allow(rustdoc::broken_intra_doc_links, rustdoc::bare_urls, rustdoc::invalid_html_tags)]\n\n")
    out.append("use std::collections::BTreeMap;\n\nuse serde::{Deserialize, Serialize};\n\n")
    for shp in model.order:
        name = model.names[shp]
        doc = doc_lines(model.docs.get(shp, ""))
        if shp[0] == "enum":
            out.append(doc)
            out.append("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]\n")
            out.append(f"pub enum {name} {{\n")
            for value in shp[1]:
                out.append(f'    #[serde(rename = "{value}")]\n    {variant(value)},\n')
            out.append("}\n\n")
            out.append(f"impl {name} {{\n    /// The name Istio's YAML uses for this value.\n")
            out.append("    pub fn as_str(self) -> &'static str {\n        match self {\n")
            for value in shp[1]:
                out.append(f'            Self::{variant(value)} => "{value}",\n')
            out.append("        }\n    }\n}\n\n")
            continue
        props = dict((k, (s, req)) for k, s, req in shp[1])
        out.append(doc)
        out.append("#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]\n")
        out.append(f"pub struct {name} {{\n")
        used = set()
        for prop in sorted(props):
            sub, _required = props[prop]
            field = snake(prop)
            if field in used:
                field = field + "_snake"
            used.add(field)
            ty = model.rust_shape(sub)
            attrs = []
            if field.removeprefix("r#") != prop:
                attrs.append(f'rename = "{prop}"')
            if sub[0] == "arr":
                attrs += ["default", 'skip_serializing_if = "Vec::is_empty"']
            elif sub[0] == "map":
                attrs += ["default", 'skip_serializing_if = "BTreeMap::is_empty"']
            else:
                ty = f"Option<{ty}>"
                attrs += ["default", 'skip_serializing_if = "Option::is_none"']
            fdoc = model.docs.get(("field", name, prop), "")
            out.append(doc_lines(fdoc, "    "))
            out.append(f"    #[serde({', '.join(attrs)})]\n")
            out.append(f"    pub {field}: {ty},\n")
        out.append("}\n\n")
    return "".join(out)


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "istio-crds" / "crd-all.gen.yaml")
    crds = [d for d in yaml.safe_load_all(src.read_text()) if d and d.get("kind") == "CustomResourceDefinition"]
    model = Model()
    schemas = {}
    kinds = []
    for crd in sorted(crds, key=lambda c: (c["spec"]["group"], c["spec"]["names"]["kind"])):
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        versions = [v for v in crd["spec"]["versions"] if v.get("served")]
        storage = next(v for v in versions if v.get("storage"))
        spec = storage["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for v in versions:
            other = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
            if trim(other) != trim(spec):
                sys.exit(f"{kind} {v['name']} differs from {storage['name']}: generate per version")
        schemas[f"{group}/{kind}"] = {
            "group": group,
            "kind": kind,
            "plural": crd["spec"]["names"]["plural"],
            "versions": [v["name"] for v in versions],
            "spec": trim(spec),
        }
        kinds.append((group, kind, spec))
    for _group, kind, spec in kinds:
        model.prefer(spec, kind)
    for _group, kind, spec in kinds:
        model.visit(spec, kind, kind, "Spec", spec.get("description", ""))
    # field docs, keyed by the owning struct's final name
    def collect(schema, path):
        shp = shape(schema)
        if shp[0] == "obj":
            owner = model.names[shp]
            for prop, sub in schema["properties"].items():
                model.docs.setdefault(("field", owner, prop), sub.get("description", ""))
                collect(sub, f"{path}.{prop}")
        elif shp[0] == "map":
            collect(schema["additionalProperties"], path)
        elif shp[0] == "arr":
            collect(schema.get("items", {}), path)
    for crd in crds:
        versions = [v for v in crd["spec"]["versions"] if v.get("storage")]
        collect(versions[0]["schema"]["openAPIV3Schema"]["properties"]["spec"], "")
    rust = emit(model, None, kinds)
    rust += "/// The generated spec type of each Istio kind, by kind name.\n"
    rust += "pub const SPEC_TYPES: &[(&str, &str)] = &[\n"
    for group, kind, _spec in kinds:
        spec = schemas[f"{group}/{kind}"]["spec"]
        rust += f'    ("{kind}", "{model.names[shape(spec)]}"),\n'
    rust += "];\n"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "types.rs").write_text(rust)
    (OUT_DIR / "schema.json").write_text(json.dumps(schemas, indent=None, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{len(kinds)} kinds, {len(model.order)} types")


if __name__ == "__main__":
    main()
