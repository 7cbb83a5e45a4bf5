//! Istio's metric overrides — the Telemetry API's `metrics.overrides`, carried by the
//! `istio.stats` filter's configuration (for TCP, the filter chain's `istio.stats`
//! metadata): a metric dropped, standard labels removed, labels added or replaced from
//! attributes of the request or connection.
//!
//! The four request metrics (or the four TCP metrics) are recorded in groups that share
//! one rule (usually all four share one): each group keys its series by the labels it
//! writes, so that requests that differ only in a removed label count in the same series.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::HeaderName;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use weft_envoy::stats::{Attribute, STANDARD_LABELS, StatsConfig, parse_attribute};

use super::Labels;

/// The overrides of one connection manager, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Overrides {
    groups: Vec<Group>,
    /// Request headers the added labels read.
    headers: Vec<HeaderName>,
}

/// Request metrics that share a rule.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    /// Bit `i`: the `i`th of the four metrics (`HTTP_METRICS` or `TCP_METRICS`).
    pub(super) families: u8,
    rule: Rule,
}

impl Group {
    /// Whether the group writes Istio's standard labels unchanged.
    pub(super) fn is_plain(&self) -> bool {
        self.rule.removed == 0 && self.rule.added.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    /// Bit `i`: standard label `STANDARD_LABELS[i]` is not written.
    removed: u32,
    /// Labels added (or replacing a standard one), sorted by name.
    added: Vec<(Arc<str>, Attribute)>,
}

impl Overrides {
    /// The overrides in `config` of the four `metrics`; `None` when it changes nothing,
    /// so that requests take the plain path. An expression that cannot be evaluated is an
    /// error.
    pub fn compile(config: &StatsConfig, metrics: &[&str; 4]) -> Result<Option<Overrides>, String> {
        let mut groups: Vec<Group> = Vec::new();
        let mut trivial = true;
        for (i, metric) in metrics.iter().enumerate() {
            let (drop, removed, added) = config.for_metric(metric);
            if drop {
                trivial = false;
                continue;
            }
            let mut mask = 0u32;
            for name in removed.iter().map(String::as_str).chain(added.keys().map(String::as_str)) {
                if let Some(bit) = STANDARD_LABELS.iter().position(|l| *l == name) {
                    mask |= 1 << bit;
                }
            }
            let added = added
                .iter()
                .map(|(k, v)| parse_attribute(v).map(|a| (Arc::from(k.as_str()), a)))
                .collect::<Result<Vec<_>, _>>()?;
            trivial &= mask == 0 && added.is_empty();
            let rule = Rule { removed: mask, added };
            match groups.iter_mut().find(|g| g.rule == rule) {
                Some(g) => g.families |= 1 << i,
                None => groups.push(Group { families: 1 << i, rule }),
            }
        }
        if trivial {
            return Ok(None);
        }
        let mut headers: Vec<HeaderName> = Vec::new();
        for g in &groups {
            for (_, a) in &g.rule.added {
                let name = match a {
                    Attribute::RequestHeader(h) => crate::model::route::header_name(h).map_err(|e| e.to_string())?,
                    Attribute::RequestUserAgent => hyper::header::USER_AGENT,
                    Attribute::RequestReferer => hyper::header::REFERER,
                    Attribute::RequestId => HeaderName::from_static("x-request-id"),
                    Attribute::RequestScheme => HeaderName::from_static("x-forwarded-proto"),
                    _ => continue,
                };
                if !headers.contains(&name) {
                    headers.push(name);
                }
            }
        }
        Ok(Some(Overrides { groups, headers }))
    }

    pub(super) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// What the added labels need from the request, taken as it arrives.
    pub fn capture(&self, req: &hyper::Request<crate::body::Inbound>) -> Captured {
        let mut headers = HeaderMap::new();
        for name in &self.headers {
            if let Some(v) = req.headers().get(name) {
                headers.insert(name.clone(), v.clone());
            }
        }
        Captured {
            method: req.method().as_str().to_owned(),
            path: req.uri().path_and_query().map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            host: crate::http::authority(req).unwrap_or_default(),
            protocol: crate::http::protocol_name(req.version()),
            headers,
        }
    }
}

/// The request's side of the added labels.
#[derive(Debug)]
pub struct Captured {
    method: String,
    path: String,
    host: String,
    protocol: &'static str,
    headers: HeaderMap,
}

/// What a finished request offers the added labels.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The request's side (none for TCP).
    pub captured: Option<&'a Captured>,
    /// The client.
    pub source: SocketAddr,
    /// Where the client connected to.
    pub destination: SocketAddr,
    /// The cluster, if it reached one.
    pub cluster: Option<&'a str>,
    /// The route, if one matched.
    pub route: Option<&'a str>,
}

fn evaluate(a: &Attribute, labels: &Labels, f: &Finished<'_>) -> String {
    let header = |name: &str| {
        f.captured.and_then(|c| c.headers.get(name)).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let request = |part: fn(&Captured) -> String| f.captured.map(part).unwrap_or_default();
    match a {
        Attribute::Literal(s) => s.clone(),
        Attribute::RequestHost => request(|c| c.host.clone()),
        Attribute::RequestMethod => request(|c| c.method.clone()),
        Attribute::RequestPath => request(|c| c.path.clone()),
        Attribute::RequestUrlPath => request(|c| c.path.split('?').next().unwrap_or("").to_owned()),
        Attribute::RequestScheme => match (f.captured, header("x-forwarded-proto")) {
            (None, _) => String::new(),
            (Some(_), s) if s.is_empty() => "http".into(),
            (Some(_), s) => s,
        },
        Attribute::RequestProtocol => request(|c| c.protocol.to_owned()),
        Attribute::RequestUserAgent => header("user-agent"),
        Attribute::RequestReferer => header("referer"),
        Attribute::RequestId => header("x-request-id"),
        Attribute::RequestHeader(name) => header(name),
        Attribute::ResponseCode if f.captured.is_some() => labels.code.to_string(),
        Attribute::ResponseCode => String::new(),
        Attribute::ResponseGrpcStatus => labels.grpc_status.map(|g| g.to_string()).unwrap_or_default(),
        Attribute::SourceAddress => f.source.to_string(),
        Attribute::SourcePort => f.source.port().to_string(),
        Attribute::DestinationAddress => f.destination.to_string(),
        Attribute::DestinationPort => f.destination.port().to_string(),
        Attribute::ClusterName => f.cluster.unwrap_or("").to_owned(),
        Attribute::RouteName => f.route.unwrap_or("").to_owned(),
    }
}

/// The series key of a group: the labels it writes. Groups that write the same labels
/// share series (each series knows which metrics it counts).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    labels: Box<[(&'static str, Arc<str>)]>,
    added: Box<[(Arc<str>, Arc<str>)]>,
}

impl Key {
    pub(super) fn new(group: &Group, labels: &Labels, finished: &Finished<'_>) -> Key {
        let mut kept = Vec::with_capacity(STANDARD_LABELS.len());
        let _ = labels.each(|i, key, value| {
            if group.rule.removed & (1 << i) == 0 {
                kept.push((key, Arc::from(value)));
            }
            Ok(())
        });
        let added =
            group.rule.added.iter().map(|(k, a)| (k.clone(), Arc::from(evaluate(a, labels, finished)))).collect();
        Key { labels: kept.into_boxed_slice(), added }
    }
}

impl EncodeLabelSet for Key {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        for (k, v) in &self.labels {
            (*k, &**v).encode(encoder.encode_label())?;
        }
        for (k, v) in &self.added {
            (&**k, &**v).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_envoy::stats::{HTTP_METRICS, MetricOverride, TCP_METRICS};

    fn config(entries: Vec<MetricOverride>) -> StatsConfig {
        StatsConfig { metrics: entries }
    }

    #[test]
    fn nothing_overridden_is_the_plain_path() {
        assert_eq!(Overrides::compile(&StatsConfig::default(), &HTTP_METRICS), Ok(None));
        let removes_nothing = MetricOverride { tags_to_remove: vec!["no_such_label".into()], ..Default::default() };
        assert_eq!(Overrides::compile(&config(vec![removes_nothing]), &HTTP_METRICS), Ok(None));
    }

    #[test]
    fn metrics_with_the_same_rule_share_a_group() {
        let all = MetricOverride { tags_to_remove: vec!["request_protocol".into()], ..Default::default() };
        let count = MetricOverride {
            name: "requests_total".into(),
            dimensions: [("request_host".to_owned(), "request.host".to_owned())].into(),
            ..Default::default()
        };
        let dropped = MetricOverride { name: "request_bytes".into(), drop: Some(true), ..Default::default() };
        let o = Overrides::compile(&config(vec![all, count, dropped]), &HTTP_METRICS)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("trivial"));
        let families: Vec<u8> = o.groups().iter().map(|g| g.families).collect();
        // requests_total alone; duration and response_bytes together; request_bytes dropped.
        assert_eq!(families, [0b0001, 0b1010]);
        assert!(o.groups().iter().all(|g| g.rule.removed == 1 << 20));
    }

    #[test]
    fn an_unknown_expression_is_refused() {
        let bad = MetricOverride {
            dimensions: [("x".to_owned(), "filter_state['a']".to_owned())].into(),
            ..Default::default()
        };
        assert!(Overrides::compile(&config(vec![bad]), &HTTP_METRICS).is_err());
        // Every TCP metric dropped: nothing is recorded.
        let off = MetricOverride { drop: Some(true), ..Default::default() };
        let o = Overrides::compile(&config(vec![off]), &TCP_METRICS).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.is_some_and(|o| o.groups().is_empty()));
    }
}
