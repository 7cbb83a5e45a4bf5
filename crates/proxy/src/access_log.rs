//! Access logs, as Envoy writes them: the file and stdout/stderr loggers, with Envoy's
//! format strings (`%RESPONSE_CODE%`, `%REQ(:AUTHORITY)%`, ...) as text or JSON, and
//! Envoy's access log filters on status code, duration and response flags, and
//! their `and`/`or`. What weft cannot write is refused when the configuration arrives.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ComparisonFilter, access_log, access_log_filter, comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{SubstitutionFormatString, data_source, substitution_format_string};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log,
};
use envoy_types::pb::google::protobuf::{Struct, value};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};

use crate::model::ConfigError;
use crate::reply::Flags;

/// Envoy's default format.
const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One configured access log.
#[derive(Debug)]
pub struct Logger {
    sink: Sink,
    format: Format,
    filter: Option<Filter>,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Stderr,
    File(Mutex<std::fs::File>),
}

#[derive(Debug, Clone, PartialEq)]
enum Format {
    Text(Vec<Piece>),
    Json(Vec<(String, Vec<Piece>)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Op(Op),
}

/// The command operators weft writes.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    StartTime,
    /// `%REQ(X?Y)%`: a request header (by its index among the captured ones).
    Req(usize),
    /// `%RESP(X)%`.
    Resp(HeaderName),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    RequestedServerName,
    RouteName,
    /// Operators Envoy has that weft leaves empty (`-`): it never fills them.
    Empty,
}

/// Envoy's access log filters.
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Status(Cmp, u32),
    Duration(Cmp, u32),
    Flags(Vec<String>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Cmp {
    fn holds(self, a: u64, b: u64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ge => a >= b,
            Cmp::Le => a <= b,
            Cmp::Ne => a != b,
        }
    }
}

/// The access logs of a connection manager, and the request headers they read.
#[derive(Debug, Default)]
pub struct AccessLogs {
    loggers: Vec<Logger>,
    /// `%REQ(...)%` headers: the first present of each entry is logged.
    request_headers: Vec<Vec<RequestPart>>,
}

/// What `%REQ(X)%` reads: a header, or one of HTTP/2's pseudo-headers.
#[derive(Debug, Clone, PartialEq)]
enum RequestPart {
    Header(HeaderName),
    Method,
    Path,
    Scheme,
}

/// What one request leaves for its access log line.
#[derive(Debug, Default)]
pub struct Entry {
    /// When the request began.
    pub start: Option<SystemTime>,
    /// Captured request headers, in [`AccessLogs`] order.
    pub request: Vec<Option<HeaderValue>>,
    /// Response headers.
    pub response: HeaderMap,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'static str,
    /// Status code.
    pub code: u16,
    /// Why the proxy answered itself (`via_upstream` otherwise).
    pub code_details: &'static str,
    /// Response flags.
    pub flags: Flags,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// From the first byte in to the last byte out.
    pub duration: Duration,
    /// The upstream host that answered.
    pub upstream_host: Option<String>,
    /// The cluster the request went to.
    pub cluster: Option<String>,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// The client.
    pub remote: Option<SocketAddr>,
    /// The TLS server name.
    pub sni: Option<String>,
    /// The route's name.
    pub route: Option<String>,
}

impl AccessLogs {
    /// The access logs of an HTTP connection manager.
    pub fn from_envoy(logs: &[AccessLog]) -> Result<AccessLogs, ConfigError> {
        let mut out = AccessLogs::default();
        for log in logs {
            let logger = out.logger(log).map_err(|e| e.context(format!("access log {:?}", log.name)))?;
            out.loggers.push(logger);
        }
        Ok(out)
    }

    /// Whether there is anything to log.
    pub fn is_empty(&self) -> bool {
        self.loggers.is_empty()
    }

    /// The parts of the request the loggers need, taken before the request moves on.
    pub fn capture<B>(&self, req: &hyper::Request<B>) -> Vec<Option<HeaderValue>> {
        let part = |p: &RequestPart| match p {
            RequestPart::Header(h) => req.headers().get(h).cloned(),
            RequestPart::Method => HeaderValue::from_str(req.method().as_str()).ok(),
            RequestPart::Path => req.uri().path_and_query().and_then(|p| HeaderValue::from_str(p.as_str()).ok()),
            RequestPart::Scheme => HeaderValue::from_str(req.uri().scheme_str().unwrap_or("http")).ok(),
        };
        self.request_headers.iter().map(|parts| parts.iter().find_map(part)).collect()
    }

    /// Writes `entry` to every logger whose filter takes it.
    pub fn write(&self, entry: &Entry) {
        for logger in &self.loggers {
            if logger.filter.as_ref().is_none_or(|f| f.takes(entry)) {
                let line = logger.format.render(entry);
                let written = match &logger.sink {
                    Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                    Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
                    Sink::File(f) => match f.lock() {
                        Ok(mut f) => f.write_all(line.as_bytes()),
                        Err(_) => Ok(()),
                    },
                };
                if let Err(e) = written {
                    tracing::debug!("access log write failed: {e}");
                }
            }
        }
    }

    fn logger(&mut self, log: &AccessLog) -> Result<Logger, ConfigError> {
        let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            return Err(ConfigError::new("no typed_config"));
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        let decode_err = |e: prost::DecodeError| ConfigError::new(format!("{type_name}: {e}"));
        let (sink, format) = match type_name {
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                let f: FileAccessLog = prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                let format = match f.access_log_format {
                    None => None,
                    Some(file_access_log::AccessLogFormat::LogFormat(s)) => Some(s),
                    Some(_) => return Err(ConfigError::new("deprecated format fields: use log_format")),
                };
                let sink = match f.path.as_str() {
                    "/dev/stdout" => Sink::Stdout,
                    "/dev/stderr" => Sink::Stderr,
                    path => {
                        let file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(|e| ConfigError::new(format!("cannot open {path}: {e}")))?;
                        Sink::File(Mutex::new(file))
                    }
                };
                (sink, format)
            }
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
                let s: StdoutAccessLog = prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                (Sink::Stdout, s.access_log_format.map(|stdout_access_log::AccessLogFormat::LogFormat(f)| f))
            }
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let s: StderrAccessLog = prost::Message::decode(any.value.as_slice()).map_err(decode_err)?;
                (Sink::Stderr, s.access_log_format.map(|stderr_access_log::AccessLogFormat::LogFormat(f)| f))
            }
            other => return Err(ConfigError::new(format!("logger {other} is not supported"))),
        };
        let format = self.format(format.as_ref())?;
        let filter = log.filter.as_ref().map(compile_filter).transpose()?;
        Ok(Logger { sink, format, filter })
    }

    fn format(&mut self, f: Option<&SubstitutionFormatString>) -> Result<Format, ConfigError> {
        use substitution_format_string::Format as F;
        match f.and_then(|f| f.format.as_ref()) {
            None => Ok(Format::Text(self.pieces(DEFAULT_FORMAT)?)),
            #[allow(deprecated)]
            Some(F::TextFormat(t)) => Ok(Format::Text(self.pieces(t)?)),
            Some(F::TextFormatSource(source)) => match &source.specifier {
                Some(data_source::Specifier::InlineString(t)) => Ok(Format::Text(self.pieces(t)?)),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Ok(Format::Text(self.pieces(&String::from_utf8_lossy(b))?))
                }
                _ => Err(ConfigError::new("a format from a file or the environment is not supported")),
            },
            Some(F::JsonFormat(s)) => self.json(s),
        }
    }

    fn json(&mut self, s: &Struct) -> Result<Format, ConfigError> {
        let mut fields: Vec<(&String, &envoy_types::pb::google::protobuf::Value)> = s.fields.iter().collect();
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for (key, v) in fields {
            let Some(value::Kind::StringValue(text)) = &v.kind else {
                return Err(ConfigError::new(format!("JSON format field {key}: only string values are supported")));
            };
            out.push((key.clone(), self.pieces(text)?));
        }
        Ok(Format::Json(out))
    }

    /// Parses a format string into text and operators.
    fn pieces(&mut self, text: &str) -> Result<Vec<Piece>, ConfigError> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                out.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 1..];
            let end = after.find('%').ok_or_else(|| ConfigError::new(format!("unterminated operator in {text:?}")))?;
            let op = &after[..end];
            if op.is_empty() {
                out.push(Piece::Text("%".into()));
            } else {
                out.push(Piece::Op(self.operator(op)?));
            }
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            out.push(Piece::Text(rest.to_owned()));
        }
        Ok(out)
    }

    fn operator(&mut self, op: &str) -> Result<Op, ConfigError> {
        // `REQ(X?Y):LEN`: the length limit is accepted and not applied.
        let (name, arg) = match op.split_once('(') {
            Some((name, rest)) => (name, Some(rest.split_once(')').map_or(rest, |(a, _)| a))),
            None => (op.split(':').next().unwrap_or(op), None),
        };
        let header = |h: &str| {
            let lower = h.trim().to_ascii_lowercase();
            let lower = match lower.as_str() {
                ":authority" => "host".to_owned(),
                _ => lower,
            };
            HeaderName::from_bytes(lower.as_bytes())
                .map_err(|_| ConfigError::new(format!("bad header {h:?} in %{op}%")))
        };
        Ok(match (name, arg) {
            ("START_TIME", _) => Op::StartTime,
            ("REQ", Some(a)) => {
                let names = a
                    .split('?')
                    .map(|h| match h.trim().to_ascii_lowercase().as_str() {
                        ":method" => Ok(RequestPart::Method),
                        ":path" => Ok(RequestPart::Path),
                        ":scheme" => Ok(RequestPart::Scheme),
                        _ => header(h).map(RequestPart::Header),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.request_headers.push(names);
                Op::Req(self.request_headers.len() - 1)
            }
            ("RESP", Some(a)) => Op::Resp(header(a)?),
            ("PROTOCOL", None) => Op::Protocol,
            ("RESPONSE_CODE", None) => Op::ResponseCode,
            ("RESPONSE_CODE_DETAILS", None) => Op::ResponseCodeDetails,
            ("RESPONSE_FLAGS", None) => Op::ResponseFlags,
            ("BYTES_RECEIVED", None) => Op::BytesReceived,
            ("BYTES_SENT", None) => Op::BytesSent,
            ("DURATION", None) => Op::Duration,
            ("UPSTREAM_HOST", None) => Op::UpstreamHost,
            ("UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW", None) => Op::UpstreamCluster,
            ("DOWNSTREAM_LOCAL_ADDRESS", None) => Op::DownstreamLocalAddress,
            ("DOWNSTREAM_REMOTE_ADDRESS", None) => Op::DownstreamRemoteAddress,
            ("REQUESTED_SERVER_NAME", None) => Op::RequestedServerName,
            ("ROUTE_NAME", None) => Op::RouteName,
            (
                "CONNECTION_TERMINATION_DETAILS" | "UPSTREAM_TRANSPORT_FAILURE_REASON" | "UPSTREAM_LOCAL_ADDRESS",
                None,
            ) => Op::Empty,
            _ => return Err(ConfigError::new(format!("format operator %{op}% is not supported"))),
        })
    }
}

impl Format {
    fn render(&self, e: &Entry) -> String {
        match self {
            Format::Text(pieces) => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Op(op) => out.push_str(&value(op, e).map_or_else(|| "-".to_owned(), |v| v.text())),
                    }
                }
                out
            }
            Format::Json(fields) => {
                let mut map = serde_json::Map::new();
                for (key, pieces) in fields {
                    // One operator alone keeps its type (numbers, null when absent), as in
                    // Envoy's JSON logs; anything else is a string.
                    let v = match pieces.as_slice() {
                        [Piece::Op(op)] => match value(op, e) {
                            None => serde_json::Value::Null,
                            Some(Value::Number(n)) => serde_json::Value::from(n),
                            Some(v) => serde_json::Value::String(v.text()),
                        },
                        pieces => serde_json::Value::String(Format::Text(pieces.to_vec()).render(e)),
                    };
                    map.insert(key.clone(), v);
                }
                let mut line = serde_json::Value::Object(map).to_string();
                line.push('\n');
                line
            }
        }
    }
}

enum Value {
    Number(u64),
    Text(String),
}

impl Value {
    fn text(self) -> String {
        match self {
            Value::Number(n) => n.to_string(),
            Value::Text(t) => t,
        }
    }
}

fn value(op: &Op, e: &Entry) -> Option<Value> {
    let text = |s: &str| Some(Value::Text(s.to_owned()));
    match op {
        Op::StartTime => e.start.map(|t| Value::Text(start_time(t))),
        Op::Req(i) => {
            e.request.get(*i)?.as_ref().map(|v| Value::Text(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        }
        Op::Resp(h) => e.response.get(h).map(|v| Value::Text(String::from_utf8_lossy(v.as_bytes()).into_owned())),
        Op::Protocol => text(e.protocol),
        Op::ResponseCode => Some(Value::Number(u64::from(e.code))),
        Op::ResponseCodeDetails => text(e.code_details),
        Op::ResponseFlags => text(&e.flags.text()),
        Op::BytesReceived => Some(Value::Number(e.bytes_received)),
        Op::BytesSent => Some(Value::Number(e.bytes_sent)),
        Op::Duration => Some(Value::Number(e.duration.as_millis() as u64)),
        Op::UpstreamHost => e.upstream_host.as_deref().and_then(text),
        Op::UpstreamCluster => e.cluster.as_deref().and_then(text),
        Op::DownstreamLocalAddress => e.local.map(|a| Value::Text(a.to_string())),
        Op::DownstreamRemoteAddress => e.remote.map(|a| Value::Text(a.to_string())),
        Op::RequestedServerName => e.sni.as_deref().and_then(text),
        Op::RouteName => e.route.as_deref().filter(|r| !r.is_empty()).and_then(text),
        Op::Empty => None,
    }
}

/// Envoy's default `%START_TIME%`: `2026-11-27T23:18:44.123Z`.
fn start_time(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

fn comparison(c: Option<&ComparisonFilter>) -> Result<(Cmp, u32), ConfigError> {
    let c = c.ok_or_else(|| ConfigError::new("a comparison filter without a comparison"))?;
    let op = match comparison_filter::Op::try_from(c.op) {
        Ok(comparison_filter::Op::Eq) => Cmp::Eq,
        Ok(comparison_filter::Op::Ge) => Cmp::Ge,
        Ok(comparison_filter::Op::Le) => Cmp::Le,
        Ok(comparison_filter::Op::Ne) => Cmp::Ne,
        Err(_) => return Err(ConfigError::new(format!("comparison {} is not supported", c.op))),
    };
    let value = c.value.as_ref().map_or(0, |v| v.default_value);
    Ok((op, value))
}

fn compile_filter(f: &AccessLogFilter) -> Result<Filter, ConfigError> {
    use access_log_filter::FilterSpecifier as F;
    Ok(match &f.filter_specifier {
        Some(F::StatusCodeFilter(s)) => {
            let (op, v) = comparison(s.comparison.as_ref())?;
            Filter::Status(op, v)
        }
        Some(F::DurationFilter(d)) => {
            let (op, v) = comparison(d.comparison.as_ref())?;
            Filter::Duration(op, v)
        }
        Some(F::ResponseFlagFilter(r)) => Filter::Flags(r.flags.clone()),
        Some(F::AndFilter(a)) => Filter::And(a.filters.iter().map(compile_filter).collect::<Result<_, _>>()?),
        Some(F::OrFilter(o)) => Filter::Or(o.filters.iter().map(compile_filter).collect::<Result<_, _>>()?),
        _ => return Err(ConfigError::new("this access log filter is not supported")),
    })
}

impl Filter {
    fn takes(&self, e: &Entry) -> bool {
        match self {
            Filter::Status(op, v) => op.holds(u64::from(e.code), u64::from(*v)),
            Filter::Duration(op, v) => op.holds(e.duration.as_millis() as u64, u64::from(*v)),
            // No flags listed: any flag at all.
            Filter::Flags(flags) if flags.is_empty() => e.flags != Flags::default(),
            Filter::Flags(flags) => {
                let set = e.flags.text();
                set.split(',').any(|f| flags.iter().any(|w| w == f))
            }
            Filter::And(all) => all.iter().all(|f| f.takes(e)),
            Filter::Or(any) => any.iter().any(|f| f.takes(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(format: &str) -> AccessLogs {
        let mut l = AccessLogs::default();
        let pieces = l.pieces(format).unwrap_or_else(|e| panic!("{e}"));
        l.loggers.push(Logger { sink: Sink::Stdout, format: Format::Text(pieces), filter: None });
        l
    }

    #[test]
    fn envoys_default_format_renders_as_envoy_writes_it() {
        let l = logs(DEFAULT_FORMAT);
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/reviews/1?x=y")
            .header("host", "reviews:9080")
            .header("user-agent", "curl/7.88.1")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Entry {
            start: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_822_724_123)),
            request: l.capture(&req),
            protocol: "HTTP/1.1",
            code: 503,
            flags: Flags::UPSTREAM_OVERFLOW,
            bytes_sent: 81,
            duration: Duration::from_millis(3),
            upstream_host: Some("127.0.10.3:9080".into()),
            ..Default::default()
        };
        let line = l.loggers[0].format.render(&e);
        assert_eq!(
            line,
            "[2026-11-27T23:38:44.123Z] \"POST /reviews/1?x=y HTTP/1.1\" 503 UO 0 81 3 - \"-\" \"curl/7.88.1\" \"-\" \"reviews:9080\" \"127.0.10.3:9080\"\n"
        );
    }

    #[test]
    fn unknown_operators_are_refused() {
        let mut l = AccessLogs::default();
        assert!(l.pieces("%NOT_AN_OPERATOR%").is_err());
        assert!(l.pieces("%RESPONSE_CODE").is_err());
        assert!(l.pieces("%RESPONSE_CODE% 100%%").is_ok());
    }

    #[test]
    fn filters_compare_as_envoy_does() {
        let e = Entry { code: 404, flags: Flags::NO_ROUTE, ..Default::default() };
        assert!(Filter::Status(Cmp::Ge, 400).takes(&e));
        assert!(!Filter::Status(Cmp::Ge, 500).takes(&e));
        assert!(Filter::Or(vec![Filter::Status(Cmp::Eq, 200), Filter::Flags(vec!["NR".into()])]).takes(&e));
        assert!(!Filter::And(vec![Filter::Status(Cmp::Ge, 400), Filter::Flags(vec!["UO".into()])]).takes(&e));
    }
}
