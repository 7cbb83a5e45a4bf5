//! The `weft` command as users run it: inputs from stdin and directories, output
//! formats, thresholds, exit codes, and `weft version`.

mod common;

use common::{run, run_in, stderr, stdout, workspace_root};

const BAD_WEIGHT: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: -1
";

#[test]
fn reads_stdin_and_names_it_dash() {
    let out = run_in(&workspace_root(), &["validate", "-"], Some(BAD_WEIGHT));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "-:11: VirtualService shop/reviews: spec.http[0].route[0].weight: must not be negative\n");
}

#[test]
fn json_and_yaml_output_carry_the_same_findings() {
    let json = run_in(&workspace_root(), &["analyze", "-o", "json", "-"], Some(BAD_WEIGHT));
    let findings: serde_json::Value =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&json)));
    let first = &findings[0];
    assert_eq!(first["code"], "IST0106");
    assert_eq!(first["level"], "Error");
    assert_eq!(first["origin"], "VirtualService shop/reviews");
    assert_eq!(first["reference"], "-:11");
    assert_eq!(first["field"], "spec.http[0].route[0].weight");
    assert_eq!(first["documentationUrl"], "https://istio.io/latest/docs/reference/config/analysis/ist0106/");

    let yaml = run_in(&workspace_root(), &["analyze", "-o", "yaml", "-"], Some(BAD_WEIGHT));
    let text = stdout(&yaml);
    let parsed = weft_api::yaml::parse_stream(&text).next().and_then(Result::ok).map(|d| d.value);
    assert_eq!(parsed.as_ref(), Some(&findings), "{}", stdout(&yaml));
    assert_eq!(json.status.code(), Some(1));
    assert_eq!(yaml.status.code(), Some(1));
}

#[test]
fn thresholds_choose_what_is_shown_and_what_fails() {
    let warning_only = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: lua}
spec: {}
";
    let default = run_in(&workspace_root(), &["analyze", "-"], Some(warning_only));
    assert_eq!(default.status.code(), Some(0));
    assert!(stdout(&default).starts_with("Warning [WEFT0002] -:1: EnvoyFilter default/lua:"), "{}", stdout(&default));

    let strict = run_in(&workspace_root(), &["analyze", "--failure-threshold", "warning", "-"], Some(warning_only));
    assert_eq!(strict.status.code(), Some(1));

    let quiet = run_in(&workspace_root(), &["analyze", "--output-threshold", "error", "-"], Some(warning_only));
    assert_eq!(stdout(&quiet), "");
    assert_eq!(quiet.status.code(), Some(0));
}

#[test]
fn an_unreadable_path_is_named_and_exits_2() {
    let out = run(&["analyze", "no/such/config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no/such/config"), "{}", stderr(&out));
}

#[test]
fn clean_configuration_exits_0_and_says_so() {
    let out = run(&["analyze", "examples/bookinfo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("No validation issues found when analyzing 20 resources"), "{}", stderr(&out));
}

#[test]
fn version_names_commit_and_crypto_provider() {
    let out = run(&["version"]);
    let text = stdout(&out);
    assert!(text.starts_with(&format!("weft {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    let commit = text.lines().find_map(|l| l.strip_prefix("git commit: ")).unwrap_or_default();
    let hash = commit.trim_end_matches("-dirty");
    assert!(hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "commit {commit:?}");
    assert!(text.contains("TLS crypto provider: rustls/"), "{text}");
}

/// The default build: aws-lc-rs, not in FIPS mode, with post-quantum key exchange.
#[cfg(not(any(feature = "fips", feature = "openssl")))]
#[test]
fn the_default_build_reports_aws_lc_rs_with_post_quantum_key_exchange() {
    let text = stdout(&run(&["version"]));
    assert!(text.contains("TLS crypto provider: rustls/aws-lc-rs (FIPS mode: off)"), "{text}");
    let json = run(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["tls"]["fips"], false);
    assert!(v["tls"]["keyExchangeGroups"].as_array().is_some_and(|g| g.iter().any(|g| g == "X25519MLKEM768")));
}

#[test]
fn a_directory_is_read_recursively_with_json_and_yml() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("a/b/vs.yml"), BAD_WEIGHT).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("a/gw.json"),
        r#"{"apiVersion":"networking.istio.io/v1","kind":"Gateway","metadata":{"name":"gw"},"spec":{"servers":[{"port":{"number":0,"name":"http","protocol":"HTTP"},"hosts":["*"]}]}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run_in(dir.path(), &["validate", "."], None);
    assert_eq!(
        stdout(&out),
        "./a/b/vs.yml:11: VirtualService shop/reviews: spec.http[0].route[0].weight: must not be negative\n\
         ./a/gw.json:1: Gateway default/gw: spec.servers[0].port.number: 0 must be 1..65535\n"
    );
}

/// FIPS mode is refused, with the reason, by a build whose provider is not in FIPS mode.
#[cfg(not(any(feature = "fips", feature = "openssl")))]
#[test]
fn fips_mode_is_refused_without_a_fips_provider() {
    for args in [
        &["proxy", "--fips", "--admin-address", "127.0.0.1:0"][..],
        &["control-plane", "--fips", "--config", "."][..],
        &[
            "agent",
            "--fips",
            "--sds-socket",
            "/nonexistent/s",
            "--ca-address",
            "x:1",
            "--ca-root-cert",
            "r",
            "--token-file",
            "t",
        ][..],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} started");
        let err = stderr(&out);
        assert!(
            err.contains("FIPS mode was asked for, but the crypto provider rustls/aws-lc-rs does not run in FIPS mode"),
            "{args:?}: {err}"
        );
    }
    let out = sidecar_executable(&["--fips", "--admin-address", "127.0.0.1:0"]);
    assert!(!out.status.success(), "weft-proxy --fips started");
    assert!(stderr(&out).contains("FIPS mode was asked for"), "{}", stderr(&out));
}

/// Runs `weft-proxy ARGS`, the sidecar executable.
fn sidecar_executable(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start weft-proxy: {e}"))
}

/// `weft-proxy`, the executable sidecar and gateway images carry, takes exactly the
/// options of `weft proxy`, and names itself in its usage and version.
#[test]
fn the_sidecar_executable_takes_the_proxy_commands_options() {
    let options = |text: String| text.split_once("Options:").map(|(_, o)| o.to_owned()).unwrap_or_default();
    let sub = run(&["proxy", "--help"]);
    let alone = sidecar_executable(&["--help"]);
    assert!(sub.status.success() && alone.status.success(), "{}{}", stderr(&sub), stderr(&alone));
    let sub_options = options(stdout(&sub));
    assert!(sub_options.contains("--xds-address") && sub_options.contains("--drain-grace"), "{sub_options}");
    assert_eq!(options(stdout(&alone)), sub_options);
    assert!(stdout(&alone).contains("Usage: weft-proxy [OPTIONS]"), "{}", stdout(&alone));
    let version = stdout(&sidecar_executable(&["--version"]));
    assert_eq!(version, format!("weft-proxy {}\n", env!("CARGO_PKG_VERSION")));
}

/// The FIPS build runs the validated module and says so.
#[cfg(feature = "fips")]
#[test]
fn the_fips_build_reports_fips_mode() {
    let version = stdout(&run(&["version"]));
    assert!(version.contains("rustls/aws-lc-rs-fips (FIPS mode: on)"), "{version}");
}

/// A bad MeshConfig is refused before anything is served, naming file, line and field.
#[test]
fn a_bad_mesh_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, "trustDomain: example.org\nmeshMTLS:\n  minProtocolVersion: TLSV9\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["control-plane", "-f", ".", "--mesh-config", &file.to_string_lossy()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("mesh.yaml:3: meshMTLS.minProtocolVersion: unknown variant `TLSV9`"), "{err}");
}
