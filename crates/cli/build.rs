//! Records the git commit the binary is built from, for `weft version`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_GIT_COMMIT");
    for path in ["../../.git/HEAD", "../../.git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("WEFT_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        if !out.status.success() || hash.is_empty() {
            return None;
        }
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        Some(if dirty { format!("{hash}-dirty") } else { hash })
    });
    println!("cargo:rustc-env=WEFT_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
