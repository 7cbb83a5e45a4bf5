//! Load balancing over a cluster's hosts, as Envoy does it: priority levels with
//! overprovisioned spill-over, locality weights, panic mode below 50 % healthy, then the
//! cluster's policy (round robin, least request, random, ring hash, Maglev).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::Host;
use crate::model::cluster::LbPolicy;

/// Envoy's overprovisioning factor (1.4), in percent.
const OVERPROVISIONING: usize = 140;
/// Below this share of available hosts a level balances over all its hosts.
const PANIC_THRESHOLD_PERCENT: usize = 50;
/// Maglev's table size (a prime, as Envoy's default).
const MAGLEV_TABLE_SIZE: usize = 65537;

/// One locality group: its priority, weight, and the indexes of its hosts.
#[derive(Debug, Clone)]
pub struct Group {
    /// Priority (0 preferred).
    pub priority: u32,
    /// Locality weight (0: unweighted).
    pub weight: u32,
    /// Indexes into the host list.
    pub members: Vec<usize>,
}

/// A balancer over one host list.
#[derive(Debug)]
pub struct Balancer {
    policy: LbPolicy,
    groups: Vec<Group>,
    /// Hosts by weight for round robin: each index repeated by its weight's share.
    rotation: Vec<usize>,
    counter: AtomicUsize,
    /// Sorted (hash, host) points for ring hash; the Maglev table for Maglev.
    ring: Vec<(u64, usize)>,
    maglev: Vec<usize>,
    /// One priority, no locality weights, every host healthy per EDS.
    simple: bool,
}

/// A stable 64-bit hash.
pub fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Balancer {
    /// A balancer with no hosts.
    pub fn empty() -> Balancer {
        Balancer {
            policy: LbPolicy::RoundRobin,
            groups: Vec::new(),
            rotation: Vec::new(),
            counter: AtomicUsize::new(0),
            ring: Vec::new(),
            maglev: Vec::new(),
            simple: false,
        }
    }

    /// Arranges `hosts` (grouped by locality) for `policy`.
    pub fn new(policy: LbPolicy, hosts: &[Arc<Host>], groups: Vec<Group>) -> Balancer {
        let weights: Vec<u64> = hosts.iter().map(|h| u64::from(h.endpoint.weight.max(1))).collect();
        let mut rotation = Vec::new();
        if weights.iter().all(|w| *w == weights[0]) {
            rotation.extend(0..hosts.len());
        } else {
            // Interleave by weight so heavier hosts are spread out, not bunched.
            let max = weights.iter().copied().max().unwrap_or(1);
            for round in 0..max {
                for (i, w) in weights.iter().enumerate() {
                    if *w > round {
                        rotation.push(i);
                    }
                }
            }
        }
        let ring = match policy {
            LbPolicy::RingHash { min_ring_size } => build_ring(hosts, &weights, min_ring_size),
            _ => Vec::new(),
        };
        let maglev = match policy {
            LbPolicy::Maglev => build_maglev(hosts),
            _ => Vec::new(),
        };
        let one_level = groups.iter().all(|g| g.priority == groups[0].priority);
        let unweighted = groups.len() <= 1 || groups.iter().all(|g| g.weight == 0);
        let simple = one_level && unweighted && hosts.iter().all(|h| h.endpoint.healthy);
        Balancer { policy, groups, rotation, counter: AtomicUsize::new(fastrand::usize(..)), ring, maglev, simple }
    }

    /// Picks a host index. `hash` is the request's hash for consistent hashing;
    /// `avoid` lists hosts already tried, avoided when others are available.
    /// `any_ejected` says whether outlier detection may have ejected a host; when it
    /// has not and every host is healthy in one priority, no per-host check is needed.
    pub fn pick(&self, hosts: &[Arc<Host>], hash: Option<u64>, avoid: &[usize], any_ejected: bool) -> Option<usize> {
        if hosts.is_empty() {
            return None;
        }
        if self.simple && !any_ejected && avoid.is_empty() {
            return self.pick_simple(hosts, hash);
        }
        let now = Instant::now();
        let available: Vec<bool> = hosts.iter().map(|h| h.is_available(now)).collect();
        if let (Some(hash), LbPolicy::RingHash { .. } | LbPolicy::Maglev) = (hash, self.policy) {
            return self.pick_hashed(hash, &available, avoid);
        }
        let candidates = self.candidates(&available);
        if candidates.is_empty() {
            return None;
        }
        let fresh: Vec<usize> = candidates.iter().copied().filter(|i| !avoid.contains(i)).collect();
        let candidates = if fresh.is_empty() { candidates } else { fresh };
        match self.policy {
            LbPolicy::RoundRobin => {
                if self.rotation.is_empty() {
                    return candidates.first().copied();
                }
                // Walk the weighted rotation to the next candidate.
                for _ in 0..self.rotation.len() {
                    let i = self.rotation[self.counter.fetch_add(1, Ordering::Relaxed) % self.rotation.len()];
                    if candidates.contains(&i) {
                        return Some(i);
                    }
                }
                candidates.first().copied()
            }
            LbPolicy::LeastRequest => {
                let a = candidates[fastrand::usize(..candidates.len())];
                let b = candidates[fastrand::usize(..candidates.len())];
                let load = |i: usize| hosts[i].active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            LbPolicy::Random | LbPolicy::RingHash { .. } | LbPolicy::Maglev => {
                Some(candidates[fastrand::usize(..candidates.len())])
            }
        }
    }

    /// Every host healthy, one level, no locality weights: the policy alone decides.
    fn pick_simple(&self, hosts: &[Arc<Host>], hash: Option<u64>) -> Option<usize> {
        let n = hosts.len();
        match (self.policy, hash) {
            (LbPolicy::RingHash { .. }, Some(h)) if !self.ring.is_empty() => {
                let i = self.ring.partition_point(|(x, _)| *x < h);
                Some(self.ring[i % self.ring.len()].1)
            }
            (LbPolicy::Maglev, Some(h)) if !self.maglev.is_empty() => {
                Some(self.maglev[(h % self.maglev.len() as u64) as usize])
            }
            (LbPolicy::RoundRobin, _) if !self.rotation.is_empty() => {
                Some(self.rotation[self.counter.fetch_add(1, Ordering::Relaxed) % self.rotation.len()])
            }
            (LbPolicy::LeastRequest, _) => {
                let (a, b) = (fastrand::usize(..n), fastrand::usize(..n));
                let load = |i: usize| hosts[i].active.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            _ => Some(fastrand::usize(..n)),
        }
    }

    /// The hosts of the chosen priority level and locality.
    fn candidates(&self, available: &[bool]) -> Vec<usize> {
        if self.groups.is_empty() {
            return Vec::new();
        }
        let mut priorities: Vec<u32> = self.groups.iter().map(|g| g.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        // Each level's health, overprovisioned, decides how much load it keeps.
        let health: Vec<(u32, usize)> = priorities
            .iter()
            .map(|p| {
                let (up, total) = self
                    .groups
                    .iter()
                    .filter(|g| g.priority == *p)
                    .flat_map(|g| &g.members)
                    .fold((0, 0), |(u, t), i| (u + usize::from(available[*i]), t + 1));
                (*p, (OVERPROVISIONING * up).checked_div(total).unwrap_or(0).min(100))
            })
            .collect();
        let total_health: usize = health.iter().map(|(_, h)| h).sum::<usize>().min(100);
        let level = if total_health == 0 {
            priorities[0]
        } else {
            let mut roll = fastrand::usize(..total_health);
            let mut chosen = priorities[0];
            let mut remaining = 100usize;
            for (p, h) in &health {
                let load = (*h).min(remaining);
                remaining -= load;
                if roll < load {
                    chosen = *p;
                    break;
                }
                roll -= load;
            }
            chosen
        };
        let groups: Vec<&Group> = self.groups.iter().filter(|g| g.priority == level).collect();
        let members: Vec<usize> = groups.iter().flat_map(|g| g.members.iter().copied()).collect();
        let up = members.iter().filter(|i| available[**i]).count();
        if members.is_empty() || up * 100 < members.len() * PANIC_THRESHOLD_PERCENT {
            // Panic mode: balance over every host of the level.
            return members;
        }
        if groups.iter().any(|g| g.weight > 0) && groups.len() > 1 {
            // Locality-weighted: effective weight is weight × overprovisioned availability.
            let effective: Vec<u64> = groups
                .iter()
                .map(|g| {
                    let up = g.members.iter().filter(|i| available[**i]).count();
                    let share =
                        if g.members.is_empty() { 0 } else { (OVERPROVISIONING * up / g.members.len()).min(100) };
                    u64::from(g.weight) * share as u64
                })
                .collect();
            let total: u64 = effective.iter().sum();
            if total > 0 {
                let mut roll = fastrand::u64(..total);
                for (g, w) in groups.iter().zip(&effective) {
                    if roll < *w {
                        return g.members.iter().copied().filter(|i| available[*i]).collect();
                    }
                    roll -= w;
                }
            }
        }
        members.into_iter().filter(|i| available[*i]).collect()
    }

    fn pick_hashed(&self, hash: u64, available: &[bool], avoid: &[usize]) -> Option<usize> {
        let usable = |i: usize| available[i] && !avoid.contains(&i);
        let any_usable = (0..available.len()).any(usable);
        let ok = |i: usize| if any_usable { usable(i) } else { true };
        match self.policy {
            LbPolicy::Maglev if !self.maglev.is_empty() => {
                let start = (hash % self.maglev.len() as u64) as usize;
                (0..self.maglev.len()).map(|k| self.maglev[(start + k) % self.maglev.len()]).find(|i| ok(*i))
            }
            _ if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|(h, _)| *h < hash);
                (0..self.ring.len()).map(|k| self.ring[(start + k) % self.ring.len()].1).find(|i| ok(*i))
            }
            _ => None,
        }
    }
}

fn build_ring(hosts: &[Arc<Host>], weights: &[u64], min_ring_size: u64) -> Vec<(u64, usize)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().sum();
    let size = min_ring_size.max(hosts.len() as u64);
    let mut ring = Vec::with_capacity(size as usize + hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        let replicas = (size * weights[i]).div_ceil(total).max(1);
        for r in 0..replicas {
            ring.push((hash_of((&*host.address, r)), i));
        }
    }
    ring.sort_unstable();
    ring
}

fn build_maglev(hosts: &[Arc<Host>]) -> Vec<usize> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let m = MAGLEV_TABLE_SIZE;
    let perms: Vec<(usize, usize)> = hosts
        .iter()
        .map(|h| {
            let offset = (hash_of((&*h.address, "offset")) % m as u64) as usize;
            let skip = (hash_of((&*h.address, "skip")) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; hosts.len()];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % m;
            while table[slot] != usize::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % m;
            }
            table[slot] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}
