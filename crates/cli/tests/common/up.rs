//! `weft up` as a test runs it: started on its own control-plane address, its output
//! read back, stopped (and checked to stop) at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Polls `ready` every 200 ms until it holds, failing with `output()` after
/// [`super::mesh::STARTUP`].
pub fn wait(what: &str, output: &dyn Fn() -> String, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < super::mesh::STARTUP, "timed out waiting for {what}:\n{}", output());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Points the revision tag `tag` at `revision` in the configuration directory.
pub fn tag(config: &Path, tag: &str, revision: &str) {
    let out = super::run(&["tag", "set", tag, "--revision", revision, "-f", &config.to_string_lossy()]);
    assert!(out.status.success(), "{}", super::stderr(&out));
}

/// A running `weft up`.
pub struct Up {
    child: Child,
    out: PathBuf,
    /// Its API (`weft upgrade --api`).
    pub api: String,
    _stop: super::StopOnDrop,
}

impl Up {
    /// Starts `weft up -f config` with its state under `dir` and its control planes on
    /// `ip`; returns once it has started everything, and nothing failed to.
    pub fn start(dir: &Path, config: &Path, ip: &str) -> Up {
        let state = dir.join("state").to_string_lossy().into_owned();
        let out_path = dir.join("up.out");
        let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["up", "-f", &config.to_string_lossy(), "--state-dir", &state, "--control-plane-ip", ip])
            .stdout(Stdio::from(out))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = super::StopOnDrop(child.id());
        let up = Up { child, out: out_path, api: format!("{ip}:15080"), _stop: stop };
        wait("weft up", &|| up.output(), || up.output().contains("Ctrl-C stops the mesh"));
        assert!(!up.output().contains('✘'), "{}", up.output());
        up
    }

    /// What it has printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// `weft upgrade --api <its API> args...`.
    pub fn upgrade(&self, args: &[&str]) -> Output {
        let out = super::run(&[&["upgrade", "--api", &self.api], args].concat());
        println!("weft upgrade {args:?}:\n{}{}", super::stdout(&out), super::stderr(&out));
        out
    }

    /// SIGTERM, then checks that it stopped everything within a minute.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "weft up did not stop:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(self.output().contains("✔ stopped"), "{}", self.output());
    }
}
