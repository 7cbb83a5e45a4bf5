//! Envoy's path normalization (`normalize_path`, `merge_slashes`), applied before routing
//! and authorization so that `/a/../admin`, `/%61dmin` and `/admin` are one path: RFC 3986
//! percent-encoding normalization (unreserved characters decoded, other escapes in upper
//! case) and dot-segment removal; with `merge_slashes`, runs of `/` become one. Each
//! applies on its own, as in Envoy: merging slashes does not need `normalize_path`.

use std::borrow::Cow;

/// The path and query after `normalize_path` (when `normalize`) and `merge_slashes` (when
/// `merge`), or None when the path is not usable (Envoy answers 400). The query is left
/// as it is. A path that is normal already (most are) comes back as it is, without a copy.
pub fn normalize(path_and_query: &str, normalize: bool, merge: bool) -> Option<Cow<'_, str>> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if !normalize {
        // Merging alone does not judge the path: `*` and the like pass unchanged.
        return Some(if merge && path.contains("//") {
            Cow::Owned(with_query(merge_slashes(path), query))
        } else {
            Cow::Borrowed(path_and_query)
        });
    }
    if !path.starts_with('/') {
        return None;
    }
    if is_normal(path, merge) {
        return Some(Cow::Borrowed(path_and_query));
    }
    let decoded = decode_unreserved(path)?;
    let mut out = remove_dot_segments(&decoded);
    if merge {
        out = merge_slashes(&out);
    }
    Some(Cow::Owned(with_query(out, query)))
}

fn with_query(mut path: String, query: Option<&str>) -> String {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    path
}

/// `path` with each run of `/` made one.
fn merge_slashes(path: &str) -> String {
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

/// Whether normalizing `path` would leave it as it is: nothing percent-encoded, no dot
/// segment, and no run of slashes when they are merged.
fn is_normal(path: &str, merge: bool) -> bool {
    let escaped = path.contains('%');
    let doubled = merge && path.contains("//");
    !escaped && !doubled && path.split('/').all(|segment| segment != "." && segment != "..")
}

/// The path with escapes of unreserved characters decoded and every other escape in upper
/// case; anything not escaped, UTF-8 included, is kept as it is.
fn decode_unreserved(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 1..at + 3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
        let c = char::from(u8::from_str_radix(hex, 16).ok()?);
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
            out.push(c);
        } else {
            out.push('%');
            out.push_str(&hex.to_ascii_uppercase());
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// RFC 3986 section 5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *part {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_encoded_unreserved_characters_are_normalized() {
        for (input, want) in [
            ("/admin/x", "/admin/x"),
            ("/a/../admin/x", "/admin/x"),
            ("/./admin/./x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/a%2fb", "/a%2Fb"),
            ("/../../admin", "/admin"),
            ("/admin/..", "/"),
            ("/admin/.", "/admin/"),
            ("/p?q=/../x", "/p?q=/../x"),
            ("/café/./x", "/café/x"),
            ("/café/%7e", "/café/~"),
            ("/caf%c3%a9", "/caf%C3%A9"),
        ] {
            assert_eq!(normalize(input, true, false).as_deref(), Some(want), "{input}");
        }
        assert_eq!(normalize("//admin//x", true, false).as_deref(), Some("//admin//x"));
        assert_eq!(normalize("//admin//x", true, true).as_deref(), Some("/admin/x"));
        assert_eq!(normalize("/bad%zz", true, false), None);
        assert_eq!(normalize("/bad%4", true, false), None);
        assert_eq!(normalize("/bad%+1", true, false), None);
        assert_eq!(normalize("/bad%é", true, false), None);
    }

    #[test]
    fn a_normal_path_is_not_copied() {
        for input in ["/", "/admin/x", "/a.b/..c/.d?q=/../x", "//a//b", "/café"] {
            assert!(matches!(normalize(input, true, false), Some(Cow::Borrowed(p)) if p == input), "{input}");
        }
        for input in ["/a/./b", "/a/..", "/%61", "//a"] {
            assert!(matches!(normalize(input, true, true), Some(Cow::Owned(_))), "{input}");
        }
    }

    /// `merge_slashes` without `normalize_path` merges, as Envoy does, and does nothing else.
    #[test]
    fn slashes_are_merged_without_normalizing() {
        for (input, want) in [
            ("//admin//x", "/admin/x"),
            ("/a///b/?q=//x", "/a/b/?q=//x"),
            ("/a/../b//%61", "/a/../b/%61"),
            ("/a/./b", "/a/./b"),
            ("*", "*"),
        ] {
            assert_eq!(normalize(input, false, true).as_deref(), Some(want), "{input}");
        }
        assert!(matches!(normalize("/a/b?q=//", false, true), Some(Cow::Borrowed(_))));
        assert!(matches!(normalize("//a", false, false), Some(Cow::Borrowed("//a"))));
        assert_eq!(normalize("/bad%zz", false, true).as_deref(), Some("/bad%zz"));
    }
}
