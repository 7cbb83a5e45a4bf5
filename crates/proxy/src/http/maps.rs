//! Header maps kept for reuse. Each proxied request builds two maps (its own, parsed from
//! the client, and its response's, parsed from the host) and drops two; a map dropped
//! here is cleared and kept, its memory ready for the next request on the same thread.

use std::cell::RefCell;

use hyper::HeaderMap;

/// How many maps a thread keeps.
const KEPT: usize = 8;
/// Maps with room for more fields than this are freed, not kept.
const MAX_KEPT_CAPACITY: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map: a kept one, or a new one with room for `capacity` fields.
pub fn header_map(capacity: usize) -> HeaderMap {
    SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| HeaderMap::with_capacity(capacity))
}

/// Clears `map` and keeps it for [`header_map`].
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_room() {
        let mut map = header_map(4);
        map.insert("x-a", "1".parse().unwrap_or_else(|e| panic!("{e}")));
        let room = map.capacity();
        recycle(map);
        let again = header_map(1);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // Oversized maps are not kept.
        let mut big = HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2);
        big.insert("x-a", "1".parse().unwrap_or_else(|e| panic!("{e}")));
        recycle(big);
        assert_eq!(header_map(1).capacity(), HeaderMap::<hyper::header::HeaderValue>::with_capacity(1).capacity());
    }
}
