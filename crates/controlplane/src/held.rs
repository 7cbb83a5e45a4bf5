//! What a delta stream's proxy holds of one resource type, kept as the translation it was
//! last brought in sync with, plus its differences from it.
//!
//! A proxy in sync holds the subscribed part of a translation that every proxy of its
//! class shares, so recording that translation's maps costs a stream two pointers where
//! its own table of every name and hash cost megabytes: at 10 000 services, 30 000
//! entries per proxy. What departs from it (a subscription not yet answered, a name the
//! proxy dropped, what a reconnecting proxy says it already has) is recorded by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::Maps;

/// What one proxy holds of one type: every subscribed name of `base` at its hash, except
/// where `changed` says otherwise.
#[derive(Debug, Default)]
pub struct Held {
    /// The maps the proxy was last brought in sync with, outbound half first.
    base: Maps,
    /// Departures from `base`: a name held at this hash (`Some`) or not held (`None`).
    changed: HashMap<Arc<str>, Option<u64>>,
}

impl Held {
    /// The hash the proxy holds `name` at; `subscribed` says whether the proxy subscribes
    /// to it now (a name subscribed to since `base` is recorded in `changed`).
    pub fn get(&self, name: &str, subscribed: bool) -> Option<u64> {
        match self.changed.get(name) {
            Some(hash) => *hash,
            None if subscribed => self.base.iter().flatten().find_map(|m| m.get(name)).map(|e| e.hash),
            None => None,
        }
    }

    /// Records that the proxy holds `name` at `hash`, or (`None`) does not hold it.
    pub fn set(&mut self, name: Arc<str>, hash: Option<u64>) {
        self.changed.insert(name, hash);
    }

    /// Records a new subscription to `name`: not held until it is sent. Only a name the
    /// base has needs a record: a proxy's first subscription to ten thousand endpoint
    /// sets, waiting for its push, records nothing. (The next push must then compare in
    /// full: a base advanced to maps that have the name would otherwise say it is held.)
    pub fn subscribe(&mut self, name: Arc<str>) {
        if self.base.iter().flatten().any(|m| m.contains_key(&*name)) {
            self.changed.entry(name).or_insert(None);
        }
    }

    /// Every name held, given what is subscribed now.
    pub fn names<'a>(&'a self, subscribed: impl Fn(&str) -> bool + 'a) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        let [outbound, inbound] = &self.base;
        let in_outbound = move |name: &str| outbound.as_ref().is_some_and(|o| o.contains_key(name));
        let from_base = outbound
            .iter()
            .flat_map(|m| m.keys())
            .chain(inbound.iter().flat_map(|m| m.keys()).filter(move |n| !in_outbound(n)))
            .filter(move |n| subscribed(n) && !self.changed.contains_key(&***n));
        let from_changed = self.changed.iter().filter(|(_, hash)| hash.is_some()).map(|(n, _)| n);
        from_base.chain(from_changed)
    }

    /// The maps the proxy was last brought in sync with.
    pub fn base(&self) -> &Maps {
        &self.base
    }

    /// The proxy now holds exactly the subscribed part of `maps`.
    pub fn reset(&mut self, maps: Maps) {
        self.base = maps;
        self.changed = HashMap::new();
    }

    /// The proxy was sent the changes from the base to `maps`: each of `names` (the
    /// changed ones) it now holds as `maps` has it, if it subscribes to it.
    pub fn advance<'n>(&mut self, maps: Maps, names: impl Iterator<Item = &'n str>) {
        self.base = maps;
        if !self.changed.is_empty() {
            for name in names {
                self.changed.remove(name);
            }
        }
    }

    /// Records every name held by name, with no base: before what counts as subscribed
    /// changes wholesale (wildcard on or off).
    pub fn detach(&mut self, subscribed: impl Fn(&str) -> bool) {
        let held: Vec<(Arc<str>, u64)> = self
            .names(subscribed)
            .filter_map(|n| {
                let hash = self
                    .changed
                    .get(n)
                    .copied()
                    .flatten()
                    .or_else(|| self.base.iter().flatten().find_map(|m| m.get(&**n)).map(|e| e.hash))?;
                Some((n.clone(), hash))
            })
            .collect();
        self.base = Maps::default();
        self.changed = held.into_iter().map(|(n, h)| (n, Some(h))).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Encoded, Resources};
    use envoy_types::pb::google::protobuf::Any;

    fn map(entries: &[(&str, u64)]) -> Option<Arc<Resources>> {
        let any = Arc::new(Any::default());
        Some(Arc::new(entries.iter().map(|(n, h)| (Arc::from(*n), Encoded { any: any.clone(), hash: *h })).collect()))
    }

    fn held_names(held: &Held, subscribed: impl Fn(&str) -> bool) -> Vec<String> {
        let mut names: Vec<String> = held.names(subscribed).map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_proxy_in_sync_holds_the_subscribed_part_of_its_base_the_outbound_half_first() {
        let mut held = Held::default();
        held.reset([map(&[("a", 1), ("b", 2)]), map(&[("b", 9), ("inbound", 3)])]);
        let subscribed = |n: &str| n != "a";
        assert_eq!(held.get("a", subscribed("a")), None, "not subscribed, so not held");
        assert_eq!(held.get("b", true), Some(2), "the outbound half's");
        assert_eq!(held.get("inbound", true), Some(3));
        assert_eq!(held_names(&held, subscribed), ["b", "inbound"]);
        assert_eq!(held_names(&held, |_| true), ["a", "b", "inbound"]);
    }

    #[test]
    fn departures_from_the_base_are_recorded_by_name() {
        let mut held = Held::default();
        held.reset([map(&[("a", 1), ("b", 2)]), None]);
        // Subscribed to since the base: not held until sent.
        held.subscribe(Arc::from("b"));
        assert_eq!(held.get("b", true), None);
        // Dropped by the proxy.
        held.set(Arc::from("a"), None);
        // Said held by a reconnecting proxy.
        held.set(Arc::from("c"), Some(7));
        assert_eq!(held_names(&held, |_| true), ["c"]);
        // Sent the changes to a new base that has a and b: both held from it again.
        held.advance([map(&[("a", 4), ("b", 5)]), None], ["a", "b"].into_iter());
        assert_eq!((held.get("a", true), held.get("b", true), held.get("c", true)), (Some(4), Some(5), Some(7)));
        held.reset([map(&[("a", 4)]), None]);
        assert_eq!(held_names(&held, |_| true), ["a"]);
    }

    #[test]
    fn detaching_keeps_what_is_held_and_forgets_the_base() {
        let mut held = Held::default();
        held.reset([map(&[("a", 1), ("b", 2)]), None]);
        held.detach(|n| n == "a");
        assert!(held.base().iter().all(Option::is_none));
        // Wildcard now: b was never sent, and is not held.
        assert_eq!(held_names(&held, |_| true), ["a"]);
        assert_eq!(held.get("b", true), None);
        assert_eq!(held.get("a", true), Some(1));
    }
}
