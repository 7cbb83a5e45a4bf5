//! Whatever bytes arrive, the loader answers with resources and diagnostics, never a
//! panic; and every diagnostic points at a line that exists.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Map, Value};

const KINDS: &[(&str, &str)] = &[
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1beta1", "ServiceEntry"),
    ("networking.istio.io/v1alpha3", "WorkloadEntry"),
    ("networking.istio.io/v1", "Sidecar"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "RequestAuthentication"),
    ("telemetry.istio.io/v1", "Telemetry"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "GRPCRoute"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
    ("v1", "Service"),
    ("v1", "List"),
];

/// Field names that occur in Istio's and the Gateway API's schemas, so that generated
/// objects reach deep into the validators instead of stopping at the first unknown field.
const FIELDS: &[&str] = &[
    "hosts",
    "http",
    "route",
    "destination",
    "host",
    "subset",
    "weight",
    "match",
    "uri",
    "exact",
    "prefix",
    "regex",
    "headers",
    "port",
    "number",
    "name",
    "protocol",
    "servers",
    "tls",
    "mode",
    "subsets",
    "labels",
    "trafficPolicy",
    "portLevelSettings",
    "loadBalancer",
    "simple",
    "consistentHash",
    "gateways",
    "tcp",
    "timeout",
    "retries",
    "attempts",
    "perTryTimeout",
    "retryOn",
    "fault",
    "abort",
    "delay",
    "httpStatus",
    "percentage",
    "value",
    "redirect",
    "rewrite",
    "egress",
    "ingress",
    "defaultEndpoint",
    "bind",
    "captureMode",
    "rules",
    "from",
    "to",
    "when",
    "source",
    "operation",
    "paths",
    "key",
    "values",
    "selector",
    "matchLabels",
    "portLevelMtls",
    "jwtRules",
    "issuer",
    "jwks",
    "endpoints",
    "address",
    "ports",
    "resolution",
    "location",
    "parentRefs",
    "backendRefs",
    "matches",
    "path",
    "type",
    "hostnames",
    "listeners",
    "items",
    "metadata",
    "spec",
    "workloadSelector",
    "exportTo",
    "mirror",
    "corsPolicy",
    "allowOrigins",
    "sniHosts",
    "action",
    "tracing",
    "randomSamplingPercentage",
    "addresses",
];

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-zA-Z0-9*./:_\\-\\[\\]()|^$ ]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "*",
            "mesh",
            "v1",
            "10.0.0.0/8",
            "1s",
            "0.5s",
            "5xx",
            "ISTIO_MUTUAL",
            "HTTP",
            "unix:///x",
            "(",
            "/api/*"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS.to_vec()), inner), 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = String> {
    (prop::sample::select(KINDS.to_vec()), arb_value(), arb_value(), any::<bool>()).prop_map(
        |((api, kind), spec, extra, pretty)| {
            let mut object = Map::new();
            object.insert("apiVersion".into(), api.into());
            object.insert("kind".into(), kind.into());
            object.insert("metadata".into(), serde_json::json!({"name": "x", "namespace": "y"}));
            object.insert("spec".into(), spec);
            if kind == "List" {
                object.insert("items".into(), extra);
            }
            let value = Value::Object(object);
            if pretty { serde_json::to_string_pretty(&value).unwrap_or_default() } else { value.to_string() }
        },
    )
}

fn assert_lines_exist(text: &str) {
    let parsed = weft_api::parse_text("fuzz.yaml", text);
    // Line breaks as YAML counts them: LF, CRLF, and a lone CR.
    let breaks = text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count();
    let lines = breaks + 1;
    for d in &parsed.diagnostics {
        let line = d.origin.as_ref().map_or(1, |o| o.line);
        assert!((1..=lines).contains(&line), "line {line} of {lines}: {d}");
    }
}

fn sample_texts() -> Vec<String> {
    let dir = std::env::var_os("WEFT_ISTIO_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-samples"));
    let mut texts = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml") {
                texts.extend(std::fs::read_to_string(&p).ok());
            }
        }
    }
    texts.sort();
    texts.push(include_str!("../../../examples/bookinfo/networking.yaml").to_owned());
    texts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        assert_lines_exist(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml_like_text_never_panics(text in "([a-z]{0,6}|[:\\-\\[\\]{}&*!|>'\"#%@` ,?]|\n {0,6}){0,80}") {
        assert_lines_exist(&text);
    }

    #[test]
    fn arbitrary_objects_of_every_kind_never_panic(text in arb_object()) {
        assert_lines_exist(&text);
    }

    #[test]
    fn mutated_real_configuration_never_panics(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..8, "[ :\\-\\[\\]{}*&!|>#\n\"'a-z0-9]{0,4}"), 1..6),
    ) {
        let texts = sample_texts();
        let mut text = texts[pick.index(texts.len())].clone().into_bytes();
        for (at, delete, insert) in edits {
            let start = at.index(text.len() + 1);
            let end = (start + delete).min(text.len());
            text.splice(start..end, insert.into_bytes());
        }
        assert_lines_exist(&String::from_utf8_lossy(&text));
    }
}
