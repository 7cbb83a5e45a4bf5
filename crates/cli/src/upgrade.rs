//! Canary upgrades of the control plane: `weft upgrade --to REVISION` and its rollback.
//!
//! An upgrade starts the new revision's control plane beside the running ones, waits
//! until it is ready, then moves the proxies to it in batches. A moved proxy follows the
//! new control plane at once, keeping its listeners, open connections and in-flight
//! requests (see `weft_proxy::ControlPlane`); the revisions share the root of trust, so
//! mutual TLS between moved and unmoved workloads goes on. After each batch the upgrade
//! waits the pause, then checks the batch: every proxy connected to the new control plane
//! and in sync with it, and its error rate (5xx responses in Istio's
//! `istio_requests_total`) no more than `max_error_rate` above the rate the mesh had
//! before the upgrade. A batch that fails the check is moved back, and the upgrade stops
//! there. Once every proxy has moved, the revision tags that led to the old revisions
//! (and `default`, for workloads without a label) point to the new one, so that a
//! restarted workload comes back to it; after the grace period each old revision's
//! control plane is stopped, once nothing follows it.
//!
//! The orchestration ([`canary`]) works on a [`Fleet`], the proxies and control planes of
//! one mesh: `weft up` is one, and serves it on its API (`POST /upgrade`,
//! `POST /rollback`, `GET /upgrade`); `weft upgrade` is that API's client.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

/// The address `weft up` serves its API on by default.
pub const DEFAULT_API: &str = "127.0.0.1:15080";

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The revision to move the mesh to (Istio's naming: `1-25-0`); its control plane is
    /// started if it is not running.
    #[arg(long, value_parser = crate::revision_name, required_unless_present_any = ["rollback", "status"])]
    to: Option<String>,
    /// Move the proxies back to the revision the last upgrade moved them from, at once.
    #[arg(long, conflicts_with_all = ["to", "status"])]
    rollback: bool,
    /// Show the last upgrade's progress and exit.
    #[arg(long, conflicts_with = "to")]
    status: bool,
    /// Proxies moved together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// How long each batch runs on the new revision before its health is checked.
    #[arg(long, default_value = "10s", value_parser = crate::proxy::parse_duration)]
    pause: Duration,
    /// How long an old revision's control plane stays after the last proxy left it
    /// (default: the `Istio` resource's `inactiveRevisionDeletionGracePeriodSeconds`, else 30 s).
    #[arg(long, value_parser = crate::proxy::parse_duration)]
    grace: Option<Duration>,
    /// How much a batch's share of 5xx responses may exceed the mesh's before the
    /// upgrade (0.01: one point).
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// `weft up`'s API.
    #[arg(long, default_value = DEFAULT_API)]
    api: SocketAddr,
}

/// What an upgrade does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The revision the proxies move to.
    pub to: String,
    /// Proxies per batch.
    pub batch_size: usize,
    /// Time on the new revision before a batch is checked.
    pub pause: Duration,
    /// Time an unused old control plane stays.
    pub grace: Duration,
    /// Tolerated rise in the share of 5xx responses.
    pub max_error_rate: f64,
    /// Whether batches are checked (a rollback moves everything back unchecked).
    pub gated: bool,
}

impl Plan {
    /// A plan from an API query string (`to=1-25-0&batch_size=2&pause_ms=5000...`).
    pub fn from_query(query: &str, default_grace: Duration) -> Result<Plan, String> {
        let mut plan = Plan {
            to: String::new(),
            batch_size: 1,
            pause: Duration::from_secs(10),
            grace: default_grace,
            max_error_rate: 0.01,
            gated: true,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{key}: {v:?} is not a whole number"));
            match &*key {
                "to" => plan.to = crate::revision_name(&value)?,
                "batch_size" => plan.batch_size = usize::try_from(number(&value)?.max(1)).unwrap_or(1),
                "pause_ms" => plan.pause = Duration::from_millis(number(&value)?),
                "grace_ms" => plan.grace = Duration::from_millis(number(&value)?),
                "max_error_rate" => {
                    plan.max_error_rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| format!("max_error_rate: {value:?} is not between 0 and 1"))?;
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        if plan.to.is_empty() {
            return Err("to: the revision to upgrade to is missing".into());
        }
        Ok(plan)
    }

    fn query(&self) -> String {
        format!(
            "to={}&batch_size={}&pause_ms={}&max_error_rate={}",
            self.to,
            self.batch_size,
            self.pause.as_millis(),
            self.max_error_rate
        )
    }
}

/// Requests a set of proxies counted, and how many of them were answered 5xx.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
}

impl Counts {
    /// The share of errors between `self` (earlier) and `later`; none without requests.
    fn error_rate_until(self, later: Counts) -> Option<f64> {
        let requests = later.requests - self.requests;
        (requests > 0.0).then(|| ((later.errors - self.errors) / requests).max(0.0))
    }

    /// Sums `istio_requests_total` in a Prometheus text exposition.
    pub fn from_prometheus(text: &str) -> Counts {
        let mut counts = Counts::default();
        for line in text.lines().filter(|l| l.starts_with("istio_requests_total{")) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            counts.requests += value;
            if series.contains("response_code=\"5") {
                counts.errors += value;
            }
        }
        counts
    }
}

/// The proxies and control planes of one mesh, as an upgrade sees them.
pub trait Fleet {
    /// Every proxy, with the revision whose control plane it follows now.
    fn proxies(&self) -> Vec<(String, String)>;
    /// Starts `revision`'s control plane unless it runs; returns once it is ready, and
    /// whether it started it.
    async fn ensure_revision(&self, revision: &str) -> anyhow::Result<bool>;
    /// Moves a proxy to `revision`'s control plane; returns once the proxy is connected
    /// to it and has taken its configuration.
    async fn move_proxy(&self, proxy: &str, revision: &str) -> anyhow::Result<()>;
    /// What the named proxies have counted so far.
    async fn counts(&self, proxies: &[String]) -> Counts;
    /// Points the revision tags the named proxies use at `revision`; returns what it did
    /// (`tag prod-stable → revision 1-25-0`), and what it could not.
    fn point_tags(&self, proxies: &[String], revision: &str) -> anyhow::Result<Vec<String>>;
    /// Stops a revision's control plane.
    async fn retire(&self, revision: &str);
}

/// Where an upgrade is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No upgrade has run.
    Idle,
    Running,
    /// Every proxy moved; old revisions retire after the grace period.
    Complete,
    /// Old revisions retired too.
    Done,
    /// A batch degraded and was moved back.
    RolledBack,
    /// The new revision never became ready; nothing moved.
    Failed,
}

impl State {
    /// As the API says it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "none",
            State::Running => "running",
            State::Complete => "complete",
            State::Done => "done",
            State::RolledBack => "rolled back",
            State::Failed => "failed",
        }
    }
}

/// How an upgrade is going.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The revisions proxies moved from (each proxy's, to move it back).
    pub moved_from: Vec<(String, String)>,
    pub to: String,
    pub state: State,
    /// What happened, in order.
    pub events: Vec<String>,
}

impl Status {
    /// A new upgrade's.
    pub fn new(to: &str) -> Status {
        Status { moved_from: Vec::new(), to: to.to_owned(), state: State::Running, events: Vec::new() }
    }

    /// Before any upgrade.
    pub fn idle() -> Status {
        Status { state: State::Idle, ..Status::new("") }
    }

    /// The revision most moved proxies came from: where a rollback goes.
    pub fn rollback_target(&self) -> Option<String> {
        let mut counts: Vec<(usize, &str)> = Vec::new();
        for (_, from) in &self.moved_from {
            match counts.iter_mut().find(|(_, r)| r == from) {
                Some(c) => c.0 += 1,
                None => counts.push((1, from)),
            }
        }
        counts.into_iter().max_by_key(|(n, _)| *n).map(|(_, r)| r.to_owned())
    }

    /// As the API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "to": self.to,
            "from": self.rollback_target(),
            "state": self.state.as_str(),
            "moved": self.moved_from.iter().map(|(p, from)| json!({"proxy": p, "from": from})).collect::<Vec<_>>(),
            "events": self.events,
        })
    }
}

fn event(status: &RefCell<Status>, text: String) {
    tracing::info!("{text}");
    status.borrow_mut().events.push(text);
}

/// Runs an upgrade to its end (see the module's documentation).
pub async fn canary(fleet: &impl Fleet, plan: &Plan, status: &RefCell<Status>) {
    let to = plan.to.as_str();
    match fleet.ensure_revision(to).await {
        Ok(true) => event(status, format!("the control plane of revision {to} started, and is ready")),
        Ok(false) => event(status, format!("the control plane of revision {to} runs already")),
        Err(e) => {
            event(status, format!("revision {to} did not become ready: {e:#}; nothing moved"));
            status.borrow_mut().state = State::Failed;
            return;
        }
    }
    let proxies = fleet.proxies();
    let pending: Vec<(String, String)> = proxies.iter().filter(|(_, r)| r != to).cloned().collect();
    if pending.is_empty() {
        event(status, format!("every proxy already follows revision {to}"));
    }
    // The mesh's error rate before anything moves: what a batch is compared with.
    let everyone: Vec<String> = proxies.iter().map(|(p, _)| p.clone()).collect();
    let mut baseline = 0.0;
    if plan.gated && !pending.is_empty() {
        let before = fleet.counts(&everyone).await;
        tokio::time::sleep(plan.pause).await;
        baseline = before.error_rate_until(fleet.counts(&everyone).await).unwrap_or(0.0);
        event(status, format!("error rate before the upgrade: {:.2}%", baseline * 100.0));
    }
    let batches: Vec<&[(String, String)]> = pending.chunks(plan.batch_size.max(1)).collect();
    for (n, batch) in batches.iter().enumerate() {
        let names: Vec<String> = batch.iter().map(|(p, _)| p.clone()).collect();
        event(status, format!("batch {}/{}: moving {} to revision {to}", n + 1, batches.len(), names.join(", ")));
        let before = fleet.counts(&names).await;
        let start = status.borrow().moved_from.len();
        let mut trouble = None;
        for (proxy, from) in batch.iter() {
            status.borrow_mut().moved_from.push((proxy.clone(), from.clone()));
            if let Err(e) = fleet.move_proxy(proxy, to).await {
                trouble = Some(format!("{proxy} did not take revision {to}'s configuration: {e:#}"));
                break;
            }
        }
        if trouble.is_none() && plan.gated {
            tokio::time::sleep(plan.pause).await;
            let rate = before.error_rate_until(fleet.counts(&names).await);
            if let Some(rate) = rate.filter(|r| *r > baseline + plan.max_error_rate) {
                trouble = Some(format!(
                    "error rate {:.2}% against {:.2}% before the upgrade",
                    rate * 100.0,
                    baseline * 100.0
                ));
            } else {
                let shown = rate.map_or("no requests".to_owned(), |r| format!("error rate {:.2}%", r * 100.0));
                event(status, format!("batch {}/{} healthy ({shown})", n + 1, batches.len()));
            }
        }
        if let Some(reason) = trouble {
            event(status, format!("batch {}/{} degraded: {reason}; moving it back", n + 1, batches.len()));
            let moved = status.borrow_mut().moved_from.split_off(start);
            for (proxy, from) in &moved {
                if let Err(e) = fleet.move_proxy(proxy, from).await {
                    event(status, format!("{proxy} could not move back to revision {from}: {e:#}"));
                }
            }
            if fleet.proxies().iter().all(|(_, r)| r != to) {
                fleet.retire(to).await;
                event(status, format!("revision {to} stopped: nothing follows it"));
            }
            status.borrow_mut().state = State::RolledBack;
            return;
        }
    }
    let moved: Vec<String> = status.borrow().moved_from.iter().map(|(p, _)| p.clone()).collect();
    match fleet.point_tags(&moved, to) {
        Ok(changed) => {
            for change in changed {
                event(status, change);
            }
        }
        Err(e) => event(status, format!("the revision tags could not be re-pointed: {e:#}")),
    }
    let mut old: Vec<String> = status.borrow().moved_from.iter().map(|(_, r)| r.clone()).collect();
    old.sort();
    old.dedup();
    event(
        status,
        if old.is_empty() {
            format!("every proxy follows revision {to}")
        } else {
            format!(
                "every proxy follows revision {to}; revision {} stops in {:?} once nothing follows it",
                old.join(", "),
                plan.grace
            )
        },
    );
    status.borrow_mut().state = State::Complete;
    tokio::time::sleep(plan.grace).await;
    for revision in old {
        if fleet.proxies().iter().any(|(_, r)| *r == revision) {
            event(status, format!("revision {revision} stays: proxies follow it again"));
        } else {
            fleet.retire(&revision).await;
            event(status, format!("revision {revision} stopped"));
        }
    }
    status.borrow_mut().state = State::Done;
}

/// `weft upgrade`: asks `weft up` to upgrade or roll back, and follows the progress.
pub fn run(args: UpgradeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let base = format!("http://{}", args.api);
        let (method, path) = if args.rollback {
            (hyper::Method::POST, "/rollback".to_owned())
        } else if let Some(to) = &args.to {
            let mut query = Plan {
                to: to.clone(),
                batch_size: args.batch_size as usize,
                pause: args.pause,
                grace: Duration::ZERO,
                max_error_rate: args.max_error_rate,
                gated: true,
            }
            .query();
            if let Some(grace) = args.grace {
                query.push_str(&format!("&grace_ms={}", grace.as_millis()));
            }
            (hyper::Method::POST, format!("/upgrade?{query}"))
        } else {
            (hyper::Method::GET, "/upgrade".to_owned())
        };
        let (code, body) = crate::up::http(method, &format!("{base}{path}")).await.ok_or_else(|| {
            anyhow::anyhow!("cannot reach weft up's API at {} (is `weft up` running? see --api)", args.api)
        })?;
        if !(200..300).contains(&code) {
            let message: Value = serde_json::from_slice(&body).unwrap_or_default();
            anyhow::bail!("{}", message["error"].as_str().unwrap_or("the request failed"));
        }
        // Follow the events until the upgrade stops running.
        let mut shown = 0;
        loop {
            let (_, body) = crate::up::http(hyper::Method::GET, &format!("{base}/upgrade"))
                .await
                .ok_or_else(|| anyhow::anyhow!("weft up's API at {} went away", args.api))?;
            let status: Value = serde_json::from_slice(&body)?;
            let events = status["events"].as_array().cloned().unwrap_or_default();
            for e in events.iter().skip(shown) {
                println!("{}", e.as_str().unwrap_or_default());
            }
            shown = events.len();
            let state = status["state"].as_str().unwrap_or_default();
            if args.status || state != "running" {
                return Ok(match state {
                    "complete" | "done" | "running" => ExitCode::SUCCESS,
                    _ => {
                        eprintln!("upgrade {state}");
                        ExitCode::FAILURE
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mesh in memory: proxies, which revision each follows, and how each answers.
    struct FakeFleet {
        proxies: RefCell<Vec<(String, String)>>,
        /// Per proxy: requests and errors counted so far; a proxy on a `bad` revision errs.
        counts: RefCell<Vec<Counts>>,
        bad: Vec<String>,
        running: RefCell<Vec<String>>,
        log: RefCell<Vec<String>>,
    }

    impl FakeFleet {
        fn new(n: usize, revision: &str, bad: &[&str]) -> FakeFleet {
            FakeFleet {
                proxies: RefCell::new((0..n).map(|i| (format!("p{i}"), revision.to_owned())).collect()),
                counts: RefCell::new(vec![Counts::default(); n]),
                bad: bad.iter().map(|b| (*b).to_owned()).collect(),
                running: RefCell::new(vec![revision.to_owned()]),
                log: RefCell::new(Vec::new()),
            }
        }
    }

    impl Fleet for FakeFleet {
        fn proxies(&self) -> Vec<(String, String)> {
            self.proxies.borrow().clone()
        }
        async fn ensure_revision(&self, revision: &str) -> anyhow::Result<bool> {
            let started = !self.running.borrow().iter().any(|r| r == revision);
            if started {
                self.running.borrow_mut().push(revision.to_owned());
            }
            Ok(started)
        }
        async fn move_proxy(&self, proxy: &str, revision: &str) -> anyhow::Result<()> {
            self.log.borrow_mut().push(format!("{proxy}→{revision}"));
            for p in self.proxies.borrow_mut().iter_mut().filter(|(p, _)| p == proxy) {
                p.1 = revision.to_owned();
            }
            Ok(())
        }
        async fn counts(&self, proxies: &[String]) -> Counts {
            // Every look is 100 more requests per proxy; those on the bad revision fail 10%.
            let mut total = Counts::default();
            for (i, (name, revision)) in self.proxies.borrow().iter().enumerate() {
                let mut c = self.counts.borrow_mut();
                c[i].requests += 100.0;
                if self.bad.contains(revision) {
                    c[i].errors += 10.0;
                }
                if proxies.contains(name) {
                    total.requests += c[i].requests;
                    total.errors += c[i].errors;
                }
            }
            total
        }
        fn point_tags(&self, _: &[String], revision: &str) -> anyhow::Result<Vec<String>> {
            Ok(vec![format!("tag default → revision {revision}")])
        }
        async fn retire(&self, revision: &str) {
            self.running.borrow_mut().retain(|r| r != revision);
        }
    }

    fn plan(to: &str, batch_size: usize) -> Plan {
        Plan {
            to: to.into(),
            batch_size,
            pause: Duration::from_millis(1),
            grace: Duration::from_millis(1),
            max_error_rate: 0.01,
            gated: true,
        }
    }

    #[tokio::test]
    async fn a_healthy_upgrade_moves_every_proxy_in_batches_and_retires_the_old_revision() {
        let fleet = FakeFleet::new(5, "1-0-0", &[]);
        let status = RefCell::new(Status::new("2-0-0"));
        canary(&fleet, &plan("2-0-0", 2), &status).await;
        let s = status.borrow();
        assert_eq!(s.state, State::Done, "{:?}", s.events);
        assert!(fleet.proxies().iter().all(|(_, r)| r == "2-0-0"));
        assert_eq!(*fleet.running.borrow(), ["2-0-0"]);
        let batches: Vec<&String> = s.events.iter().filter(|e| e.contains(": moving")).collect();
        assert_eq!(batches.len(), 3, "{batches:?}");
        assert!(batches[0].starts_with("batch 1/3: moving p0, p1 to"), "{batches:?}");
        assert!(s.events.iter().any(|e| e == "tag default → revision 2-0-0"), "{:?}", s.events);
        assert_eq!(s.rollback_target().as_deref(), Some("1-0-0"));
    }

    #[tokio::test]
    async fn a_batch_that_raises_the_error_rate_is_moved_back_and_nothing_else_moves() {
        let fleet = FakeFleet::new(4, "1-0-0", &["2-0-0"]);
        let status = RefCell::new(Status::new("2-0-0"));
        canary(&fleet, &plan("2-0-0", 2), &status).await;
        let s = status.borrow();
        assert_eq!(s.state, State::RolledBack, "{:?}", s.events);
        assert!(fleet.proxies().iter().all(|(_, r)| r == "1-0-0"), "{:?}", fleet.proxies());
        assert_eq!(*fleet.log.borrow(), ["p0→2-0-0", "p1→2-0-0", "p0→1-0-0", "p1→1-0-0"]);
        assert!(s.events.iter().any(|e| e.contains("degraded: error rate")), "{:?}", s.events);
        // Nothing follows the new revision any more: its control plane is stopped.
        assert_eq!(*fleet.running.borrow(), ["1-0-0"]);
    }

    #[tokio::test]
    async fn errors_the_mesh_already_had_do_not_stop_an_upgrade() {
        // Everything fails 10% on 1-0-0 and on 2-0-0 alike: no batch is worse than before.
        let fleet = FakeFleet::new(2, "1-0-0", &["1-0-0", "2-0-0"]);
        let status = RefCell::new(Status::new("2-0-0"));
        canary(&fleet, &plan("2-0-0", 1), &status).await;
        assert_eq!(status.borrow().state, State::Done, "{:?}", status.borrow().events);
    }

    #[test]
    fn counts_sum_istio_requests_total() {
        let text = "# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"source\",response_code=\"200\"} 90\n\
            istio_requests_total{reporter=\"source\",response_code=\"503\"} 10\n\
            istio_request_bytes_sum{response_code=\"503\"} 7\n";
        assert_eq!(Counts::from_prometheus(text), Counts { requests: 100.0, errors: 10.0 });
    }

    #[test]
    fn plans_come_from_the_api_query() {
        let plan = Plan::from_query("to=1-25-0&batch_size=3&pause_ms=200&max_error_rate=0.05", Duration::from_secs(30));
        assert_eq!(
            plan,
            Ok(Plan {
                to: "1-25-0".into(),
                batch_size: 3,
                pause: Duration::from_millis(200),
                grace: Duration::from_secs(30),
                max_error_rate: 0.05,
                gated: true
            })
        );
        assert!(Plan::from_query("to=1.25", Duration::ZERO).is_err_and(|e| e.contains("not a revision name")));
        assert!(Plan::from_query("batch_size=2", Duration::ZERO).is_err_and(|e| e.contains("missing")));
        assert!(Plan::from_query("to=a&max_error_rate=3", Duration::ZERO).is_err());
    }
}
