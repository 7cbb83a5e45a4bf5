//! Names and addresses: DNS labels and subdomains, wildcard hosts, IPs and CIDRs.

use std::net::IpAddr;

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A host as Istio accepts it in `hosts` fields: a DNS name whose first label may be
/// `*` or start with `*` (`*.example.com`, `*`), letters of either case.
pub fn is_wildcard_hostname(host: &str) -> bool {
    if host == "*" {
        return true;
    }
    let rest = host.strip_prefix("*.").or_else(|| host.strip_prefix('*')).unwrap_or(host);
    if rest.is_empty() || rest.len() > 255 {
        return false;
    }
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    rest.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// An IP address, or a CIDR block with a prefix length that fits the address family.
pub fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(len)) => len <= 32,
            (Ok(IpAddr::V6(_)), Ok(len)) => len <= 128,
            _ => false,
        },
    }
}

/// Whether host pattern `a` matches every name `b` matches (`*.com` covers `*.example.com`).
pub fn host_covers(a: &str, b: &str) -> bool {
    if a == "*" || a.eq_ignore_ascii_case(b) {
        return true;
    }
    match a.strip_prefix('*') {
        Some(suffix) => {
            let b_rest = b.strip_prefix('*').unwrap_or(b);
            b_rest.len() >= suffix.len()
                && b_rest.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
                && (b_rest.len() > suffix.len() || !b.starts_with('*'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in
            ["reviews", "reviews.default.svc.cluster.local", "*.example.com", "*", "*example.com", "api.Example.com"]
        {
            assert!(is_wildcard_hostname(ok), "{ok}");
        }
        for bad in ["", "foo..bar", "-a.com", "a b", "*.", "http://x", "a/b"] {
            assert!(!is_wildcard_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!(is_ip_or_cidr("10.0.0.1"));
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(is_ip_or_cidr("2001:db8::/32"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
        assert!(!is_ip_or_cidr("example.com"));
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("bookinfo-gateway.v1"));
        assert!(!is_dns1123_subdomain("Bookinfo"));
        assert!(!is_dns1123_label("a.b"));
    }
}
