//! Records the git commit the binary is built from, for `weft version`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_GIT_COMMIT");
    // Rebuild when HEAD moves: HEAD itself, the branch it points at, and the index
    // (which changes with every commit and every staged edit).
    let git = std::path::Path::new("../../.git");
    let mut watched = vec![git.join("HEAD"), git.join("index"), git.join("packed-refs")];
    if let Some(branch) = std::fs::read_to_string(git.join("HEAD"))
        .ok()
        .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
    {
        watched.push(git.join(branch));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
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
