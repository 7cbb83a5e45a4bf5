//! `weft proxy-status` and `weft proxy-config`: what the control plane sends each
//! proxy, read from its debug endpoint and shown as istioctl shows it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// GETs a JSON document from the control plane's debug endpoint.
pub fn fetch(debug: SocketAddr, path_and_query: &str) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(debug).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the control plane at {debug}: {e} (is `weft control-plane` running? see --control-plane)"
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, debug.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&body)?;
        if !status.is_success() {
            anyhow::bail!("{}", value["error"].as_str().unwrap_or("request failed"));
        }
        Ok(value)
    })
}

fn state(types: &Value, type_url: &str) -> &'static str {
    let t = &types[type_url];
    if t.is_null() {
        "NOT SENT"
    } else if !t["nack"].is_null() {
        "NACKED"
    } else if t["sent"] == t["acked"] {
        "SYNCED"
    } else {
        "STALE"
    }
}

/// Renders rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let text: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = widths[i])).collect();
        let _ = writeln!(out, "{}", text.join("     ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `weft proxy-status`.
pub fn proxy_status(syncz: &Value) -> String {
    let rows: Vec<Vec<String>> = syncz
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let types = &p["types"];
            vec![
                p["proxy"].as_str().unwrap_or("").to_owned(),
                state(types, CDS).to_owned(),
                state(types, LDS).to_owned(),
                state(types, EDS).to_owned(),
                state(types, RDS).to_owned(),
                p["protocol"].as_str().unwrap_or("").to_owned(),
                p["revision"].as_str().filter(|r| !r.is_empty()).unwrap_or("default").to_owned(),
            ]
        })
        .collect();
    table(&["NAME", "CDS", "LDS", "EDS", "RDS", "PROTOCOL", "REVISION"], &rows)
}

/// `weft proxy-config KIND` from a config-dump summary.
pub fn proxy_config(kind: &str, dump: &Value) -> String {
    let items = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
    match kind {
        "clusters" => {
            let rows = items("clusters")
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or("");
                    let parts: Vec<&str> = name.split('|').collect();
                    match parts.as_slice() {
                        [direction, port, subset, host] => vec![
                            host.to_string(),
                            port.to_string(),
                            subset.to_string(),
                            direction.to_string(),
                            c["type"].as_str().unwrap_or("").to_owned(),
                        ],
                        _ => vec![
                            name.to_owned(),
                            String::new(),
                            String::new(),
                            String::new(),
                            c["type"].as_str().unwrap_or("").to_owned(),
                        ],
                    }
                })
                .collect::<Vec<_>>();
            table(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"], &rows)
        }
        "listeners" => {
            let rows = items("listeners")
                .iter()
                .map(|l| {
                    vec![l["name"].as_str().unwrap_or("").to_owned(), l["address"].as_str().unwrap_or("").to_owned()]
                })
                .collect::<Vec<_>>();
            table(&["NAME", "ADDRESS"], &rows)
        }
        "routes" => {
            let mut rows = Vec::new();
            for rc in items("routes") {
                for vh in rc["virtualHosts"].as_array().into_iter().flatten() {
                    let domains: Vec<&str> =
                        vh["domains"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    for r in vh["routes"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            rc["name"].as_str().unwrap_or("").to_owned(),
                            vh["name"].as_str().unwrap_or("").to_owned(),
                            domains.first().copied().unwrap_or("").to_owned()
                                + if domains.len() > 1 { " +more" } else { "" },
                            r["match"].as_str().unwrap_or("").to_owned(),
                            r["to"].as_str().unwrap_or("").to_owned(),
                        ]);
                    }
                }
            }
            table(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "DESTINATION"], &rows)
        }
        _ => {
            let mut rows = Vec::new();
            for cla in items("endpoints") {
                for ep in cla["endpoints"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        ep.as_str().unwrap_or("").to_owned(),
                        cla["cluster"].as_str().unwrap_or("").to_owned(),
                    ]);
                }
            }
            table(&["ENDPOINT", "CLUSTER"], &rows)
        }
    }
}

/// The debug path of a proxy's config dump.
pub fn config_dump_path(proxy: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("proxyID", proxy).finish();
    format!("/debug/config_dump?{query}&summary")
}
