//! Transparent capture for `weft up --capture iptables`: every workload runs in a network
//! namespace of its own at its WorkloadEntry's address, as a pod would, and iptables rules
//! in that namespace (Istio's: outbound to 15001, inbound to 15006, the sidecar's uid
//! excluded) send its application's traffic through its sidecar, so the application
//! needs no change.
//!
//! The namespaces hang off a bridge in a hub namespace (`weft-hub`), which a veth pair
//! joins to the host: the host reaches every workload address (a route each), and the
//! workloads reach the control plane at [`HOST_IP`]. Nothing is added to the host's
//! iptables; the veth, its routes, the namespaces and their `/etc/netns` files are
//! removed when the mesh stops (or, left behind by a crash, when the next one starts).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The host's end of the link to the hub: where the control plane listens.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 78, 1);
/// The hub's end of that link.
const HUB_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 78, 2);
/// The workloads' gateway, on the hub's bridge.
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The uid sidecars run as; iptables lets its traffic pass uncaptured (Istio's 1337).
pub const PROXY_UID: u32 = 1337;
const HUB: &str = "weft-hub";
const HOST_LINK: &str = "weft0";
/// Prefix of the workloads' namespaces.
const PREFIX: &str = "weft-w";

/// The namespaces of a running mesh.
#[derive(Debug)]
pub struct Topology {
    /// Each workload's namespace, in the order given.
    pub namespaces: Vec<String>,
    addresses: Vec<Ipv4Addr>,
    cleaned: bool,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// Whether this machine can capture: root, and `ip`, `iptables` and `setpriv`.
pub fn check_capable() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().find(|l| l.starts_with("Uid:")).is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !root {
        bail!(
            "--capture iptables needs root (it creates network namespaces and iptables rules in them): run it with sudo"
        );
    }
    for tool in ["ip", "iptables", "setpriv"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            bail!("--capture iptables needs {tool} (apt-get install iproute2 iptables util-linux)");
        }
    }
    Ok(())
}

/// The workload addresses capture can use: IPv4, not loopback, each once.
pub fn addresses(workloads: &[(String, String)]) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for (name, address) in workloads {
        let ip: Ipv4Addr = address
            .parse()
            .map_err(|_| anyhow::anyhow!("WorkloadEntry {name}: capture needs an IPv4 address, not {address:?}"))?;
        if ip.is_loopback() || ip.is_unspecified() || ip.is_link_local() {
            bail!(
                "WorkloadEntry {name}: {ip} cannot be a captured workload's address (loopback and link-local addresses \
                 stay inside a network namespace); give it one such as 10.77.0.1 (see examples/capture)"
            );
        }
        if out.contains(&ip) {
            bail!("WorkloadEntry {name}: {ip} is another workload's address too");
        }
        out.push(ip);
    }
    Ok(out)
}

impl Topology {
    /// Creates the hub, one namespace per workload address with Istio's capture rules,
    /// and `/etc/netns/<namespace>/hosts` naming every service (`reviews`,
    /// `reviews.default`, the FQDN) so that applications can call them by name.
    pub fn create(addresses: &[Ipv4Addr], services: &[String]) -> anyhow::Result<Topology> {
        remove_leftovers();
        let namespaces = (0..addresses.len()).map(|i| format!("{PREFIX}{i}")).collect();
        let mut t = Topology { namespaces, addresses: addresses.to_vec(), cleaned: false };
        t.build(services).inspect_err(|_| t.cleanup())?;
        Ok(t)
    }

    fn build(&self, services: &[String]) -> anyhow::Result<()> {
        let (uplink, host, gateway) = (HUB_UPLINK_IP.to_string(), HOST_IP.to_string(), GATEWAY_IP.to_string());
        run(&["ip", "netns", "add", HUB])?;
        run(&["ip", "-n", HUB, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", HUB, "addr", "add", &format!("{gateway}/16"), "dev", "br0"])?;
        run(&["ip", "-n", HUB, "link", "set", "br0", "up"])?;
        run(&["ip", "netns", "exec", HUB, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        run(&["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "uplink", "netns", HUB])?;
        run(&["ip", "addr", "add", &format!("{host}/30"), "dev", HOST_LINK])?;
        run(&["ip", "link", "set", HOST_LINK, "up"])?;
        run(&["ip", "-n", HUB, "addr", "add", &format!("{uplink}/30"), "dev", "uplink"])?;
        run(&["ip", "-n", HUB, "link", "set", "uplink", "up"])?;
        let hosts = hosts_file(services);
        for (i, (ns, ip)) in self.namespaces.iter().zip(&self.addresses).enumerate() {
            let (ip, port) = (ip.to_string(), format!("wv{i}"));
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", HUB, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            run(&["ip", "-n", HUB, "link", "set", &port, "master", "br0", "up"])?;
            run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", ns, "route", "add", &gateway, "dev", "eth0"])?;
            run(&["ip", "-n", ns, "route", "add", "default", "via", &gateway])?;
            run(&["ip", "-n", HUB, "route", "add", &format!("{ip}/32"), "dev", "br0"])?;
            run(&["ip", "route", "add", &format!("{ip}/32"), "via", &uplink])?;
            capture_rules(ns)?;
            let dir = PathBuf::from("/etc/netns").join(ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &hosts).with_context(|| format!("cannot write {}", dir.display()))?;
        }
        Ok(())
    }

    /// The command line that runs `program args` in workload `i`'s namespace, as the
    /// sidecar's uid when `as_proxy`.
    pub fn command(&self, i: usize, as_proxy: bool, program: &str, args: &[String]) -> (PathBuf, Vec<String>) {
        let mut out: Vec<String> = ["netns", "exec", &self.namespaces[i]].map(str::to_owned).to_vec();
        if as_proxy {
            let uid = PROXY_UID.to_string();
            out.extend(["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups"].map(str::to_owned));
        }
        out.push(program.to_owned());
        out.extend(args.iter().cloned());
        (PathBuf::from("ip"), out)
    }

    /// Removes everything [`Topology::create`] made.
    pub fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for ip in &self.addresses {
            quiet(&["ip", "route", "del", &format!("{ip}/32")]);
        }
        for ns in &self.namespaces {
            quiet(&["ip", "netns", "del", ns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        // The host's end of the uplink goes with the hub.
        quiet(&["ip", "netns", "del", HUB]);
        quiet(&["ip", "link", "del", HOST_LINK]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Namespaces and files a mesh that did not stop cleanly left behind.
fn remove_leftovers() {
    let listed = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&listed).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) || name == HUB {
            quiet(&["ip", "netns", "del", name]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
    quiet(&["ip", "link", "del", HOST_LINK]);
}

/// Istio's capture rules (its init container's), in one namespace: outbound TCP to
/// 15001 except the sidecar's own and local traffic; inbound TCP to 15006 except the
/// sidecar's own ports (15020 metrics and readiness, 15021, 15090).
fn capture_rules(ns: &str) -> anyhow::Result<()> {
    let uid = PROXY_UID.to_string();
    let rules: &[&[&str]] = &[
        &["-N", "ISTIO_REDIRECT"],
        &["-A", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        &["-N", "ISTIO_IN_REDIRECT"],
        &["-A", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
        &["-N", "ISTIO_OUTPUT"],
        &["-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT"],
        &["-A", "ISTIO_OUTPUT", "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"],
        &["-A", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"],
        &["-A", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"],
        &["-N", "ISTIO_INBOUND"],
        &["-A", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND"],
        &["-A", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15020", "-j", "RETURN"],
        &["-A", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15021", "-j", "RETURN"],
        &["-A", "ISTIO_INBOUND", "-p", "tcp", "--dport", "15090", "-j", "RETURN"],
        &["-A", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT"],
    ];
    for rule in rules {
        let mut args = vec!["ip", "netns", "exec", ns, "iptables", "-t", "nat"];
        args.extend_from_slice(rule);
        run(&args)?;
    }
    Ok(())
}

/// `/etc/hosts` for a workload: every service by its names, each at an address of its
/// own that only the sidecar sees (it routes by the Host header and port).
fn hosts_file(services: &[String]) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    for (i, host) in services.iter().enumerate().take(250) {
        let mut names = vec![host.clone()];
        if let Some(short) = host.strip_suffix(".svc.cluster.local") {
            names.push(short.to_owned());
            names.push(format!("{short}.svc"));
            if let Some((name, _)) = short.split_once('.') {
                names.push(name.to_owned());
            }
        }
        out.push_str(&format!("169.254.79.{} {}\n", i + 1, names.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_leave_the_namespace() {
        let ok = addresses(&[("a".into(), "10.77.0.1".into()), ("b".into(), "10.77.0.2".into())]);
        assert_eq!(ok.ok(), Some(vec![Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)]));
        for bad in ["127.0.10.1", "169.254.1.1", "fd00::1", "", "reviews"] {
            assert!(addresses(&[("a".into(), bad.into())]).is_err(), "{bad}");
        }
        assert!(addresses(&[("a".into(), "10.0.0.1".into()), ("b".into(), "10.0.0.1".into())]).is_err());
    }

    #[test]
    fn services_answer_to_their_short_names() {
        let hosts = hosts_file(&["reviews.default.svc.cluster.local".into(), "api.example.com".into()]);
        assert!(
            hosts.contains(
                "169.254.79.1 reviews.default.svc.cluster.local reviews.default reviews.default.svc reviews\n"
            )
        );
        assert!(hosts.contains("169.254.79.2 api.example.com\n"));
    }
}
