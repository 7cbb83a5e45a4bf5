//! Embeds Envoy's protobuf descriptors, which the `envoy-types` crate ships as
//! `src/generated/types.bin`, so that config dumps render resources as Envoy does.
//! The crate is found through Cargo.lock and the registry source directory; when it
//! cannot be found (a vendored build), dumps render names and versions only.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("envoy-descriptors.bin");
    let found = find_descriptors(&manifest);
    match &found {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            if std::fs::copy(path, &out).is_err() {
                let _ = std::fs::write(&out, b"");
            }
        }
        None => {
            println!("cargo:warning=envoy-types descriptors not found; config dumps will omit resource bodies");
            let _ = std::fs::write(&out, b"");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn find_descriptors(manifest: &Path) -> Option<PathBuf> {
    let lock = manifest.ancestors().map(|d| d.join("Cargo.lock")).find(|p| p.exists())?;
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    let mut version = None;
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"envoy-types\"" {
            version =
                lines.next().and_then(|v| v.trim().strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned));
            break;
        }
    }
    let version = version?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).ok()?;
    registries
        .filter_map(Result::ok)
        .map(|r| r.path().join(format!("envoy-types-{version}/src/generated/types.bin")))
        .find(|p| p.exists())
}
