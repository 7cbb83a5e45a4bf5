//! How commands print: text for people, JSON and YAML for programs.

use clap::ValueEnum;
use serde::Serialize;
use serde_json::{Value, json};
use weft_api::Diagnostic;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// A finding as `-o json|yaml` prints it; the field names follow `istioctl analyze -o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    code: &'a str,
    level: String,
    message: &'a str,
    origin: Option<String>,
    reference: Option<String>,
    field: Option<&'a str>,
    documentation_url: Option<String>,
}

/// Prints findings. With `codes`, text lines start with the level and message code.
pub fn diagnostics(format: Format, findings: &[Diagnostic], codes: bool) -> anyhow::Result<()> {
    match format {
        Format::Text => {
            for d in findings {
                if codes {
                    println!("{} [{}] {d}", d.level, d.code);
                } else {
                    println!("{d}");
                }
            }
            Ok(())
        }
        Format::Json | Format::Yaml => {
            let reports: Vec<Report> = findings
                .iter()
                .map(|d| Report {
                    code: d.code,
                    level: d.level.to_string(),
                    message: &d.message,
                    origin: d.resource.as_ref().map(ToString::to_string),
                    reference: d.origin.as_ref().map(ToString::to_string),
                    field: d.path.as_deref(),
                    documentation_url: d.code.starts_with("IST").then(|| {
                        format!("https://istio.io/latest/docs/reference/config/analysis/{}/", d.code.to_lowercase())
                    }),
                })
                .collect();
            print_value(format, &serde_json::to_value(reports)?)
        }
    }
}

/// Prints `weft version`.
pub fn version(format: Format) -> anyhow::Result<()> {
    let tls = weft_tls::provider_info();
    let value = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gitCommit": env!("WEFT_GIT_COMMIT"),
        "tls": {
            "provider": tls.name,
            "fips": tls.fips,
            "cipherSuites": tls.cipher_suites,
            "keyExchangeGroups": tls.key_exchange_groups,
        },
    });
    match format {
        Format::Text => {
            println!("weft {}", env!("CARGO_PKG_VERSION"));
            println!("git commit: {}", env!("WEFT_GIT_COMMIT"));
            println!("TLS crypto provider: {} (FIPS mode: {})", tls.name, if tls.fips { "on" } else { "off" });
            Ok(())
        }
        _ => print_value(format, &value),
    }
}

/// Prints a JSON value as JSON or YAML.
pub fn value(format: Format, value: &Value) -> anyhow::Result<()> {
    print_value(format, value)
}

fn print_value(format: Format, value: &Value) -> anyhow::Result<()> {
    match format {
        Format::Json | Format::Text => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => {
            let mut text = String::new();
            saphyr::YamlEmitter::new(&mut text).dump(&to_yaml(value))?;
            println!("{}", text.strip_prefix("---\n").unwrap_or(&text));
        }
    }
    Ok(())
}

/// `value` as YAML text (one document, without the `---` line).
pub fn yaml_text(value: &Value) -> anyhow::Result<String> {
    let mut text = String::new();
    saphyr::YamlEmitter::new(&mut text).dump(&to_yaml(value))?;
    let body = text.strip_prefix("---\n").unwrap_or(&text);
    Ok(format!("{body}\n"))
}

fn to_yaml(value: &Value) -> saphyr::Yaml<'static> {
    use saphyr::{Scalar, Yaml};
    match value {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or_default().into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(s.clone().into())),
        Value::Array(items) => Yaml::Sequence(items.iter().map(to_yaml).collect()),
        Value::Object(map) => {
            let mut out = saphyr::Mapping::new();
            for (k, v) in map {
                out.insert(Yaml::Value(Scalar::String(k.clone().into())), to_yaml(v));
            }
            Yaml::Mapping(out)
        }
    }
}
