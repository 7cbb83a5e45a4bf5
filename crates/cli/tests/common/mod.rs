//! Helpers for tests that run the real `weft` binary.

#![allow(dead_code)]

pub mod mesh;
pub mod up;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `weft` binary Cargo built for these tests.
pub fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

/// Runs `weft ARGS` in `dir`, optionally feeding `stdin`.
pub fn run_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = weft();
    cmd.args(args).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start weft: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().map(|mut s| s.write_all(input.as_bytes())).transpose().unwrap_or_else(|e| panic!("{e}"));
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap_or_else(|e| panic!("weft did not finish: {e}"))
}

/// Runs `weft ARGS` from the workspace root.
pub fn run(args: &[&str]) -> Output {
    run_in(&workspace_root(), args, None)
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_else(|e| panic!("{e}"))
}

/// Istio's published samples: `$WEFT_ISTIO_SAMPLES`, or `../shared/istio-samples` beside
/// the repository.
pub fn istio_samples() -> PathBuf {
    let dir = std::env::var_os("WEFT_ISTIO_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/istio-samples"));
    assert!(
        dir.join("bookinfo").is_dir(),
        "Istio's samples are not at {}: set WEFT_ISTIO_SAMPLES to the istio-samples directory",
        dir.display()
    );
    dir
}

/// Sends SIGTERM to a process (`weft up`) when the test ends, however it ends.
pub struct StopOnDrop(pub u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.to_string()]).status();
    }
}

/// Whether this machine can run the transparent-capture tests (root, `ip`, `iptables`,
/// `setpriv`); in CI it must, and a missing capability fails the test.
pub fn capture_capable() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "iptables", "setpriv"].iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the capture tests: needs root, ip, iptables and setpriv (root: {root}, tools: {tools})"
    );
    eprintln!("skipping: needs root, ip, iptables and setpriv");
    false
}
