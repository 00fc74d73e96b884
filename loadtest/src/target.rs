//! The nodes a run targets, and the rule that they are on loopback.
//!
//! A load generator pointed at the wrong address is a denial-of-service
//! tool, so every `--node` is checked before anything is sent: only IP
//! literals in 127.0.0.0/8 or `::1` (and the name `localhost`, read as
//! 127.0.0.1) are accepted. Host names are refused rather than resolved,
//! because what a name resolves to can change between the check and the
//! connect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// One node: where its sockets and its HTTP API are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL given, normalised (`ws://host:port/path`); used for the
    /// upgrade request's path and `Host` header.
    pub(crate) ws_url: String,
    /// `http://host:port`, the base of `/v1/publish` on the same node.
    pub(crate) http_base: String,
    /// The socket address connections are made to.
    pub(crate) addr: SocketAddr,
}

/// Why a `--node` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Not `ws://…`.
    #[error("--node {0:?}: only ws:// URLs are supported (TLS is not measured here)")]
    Scheme(String),
    /// No port, or an unparsable host:port.
    #[error("--node {0:?}: expected ws://HOST:PORT[/path]")]
    Malformed(String),
    /// A host name other than localhost.
    #[error("--node {0:?}: give a loopback IP address (127.0.0.1, ::1), not a host name")]
    HostName(String),
    /// An address outside loopback.
    #[error(
        "--node {url:?}: {ip} is not a loopback address; the load generator only targets 127.0.0.0/8 or ::1"
    )]
    NotLoopback {
        /// The URL.
        url: String,
        /// Its address.
        ip: IpAddr,
    },
    /// No node at all.
    #[error("at least one --node is needed")]
    None,
}

/// Parses and checks every `--node`.
pub(crate) fn parse_targets(nodes: &[String]) -> Result<Vec<Target>, TargetError> {
    if nodes.is_empty() {
        return Err(TargetError::None);
    }
    nodes.iter().map(|n| parse_target(n)).collect()
}

fn parse_target(url: &str) -> Result<Target, TargetError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/ws"),
    };
    let path = if path == "/" { "/ws" } else { path };
    let malformed = || TargetError::Malformed(url.to_owned());
    let (host, port) = authority.rsplit_once(':').ok_or_else(malformed)?;
    let port: u16 = port.parse().map_err(|_| malformed())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| TargetError::HostName(url.to_owned()))?
    };
    if !ip.is_loopback() {
        return Err(TargetError::NotLoopback {
            url: url.to_owned(),
            ip,
        });
    }
    let addr = SocketAddr::new(ip, port);
    Ok(Target {
        ws_url: format!("ws://{addr}{path}"),
        http_base: format!("http://{addr}"),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> Result<Target, TargetError> {
        parse_target(url)
    }

    #[test]
    fn loopback_urls_are_accepted_and_normalised() {
        let t = one("ws://127.0.0.1:8080").unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:8080/ws");
        assert_eq!(t.http_base, "http://127.0.0.1:8080");
        let t = one("ws://127.3.2.1:9000/custom").unwrap();
        assert_eq!(t.ws_url, "ws://127.3.2.1:9000/custom");
        let t = one("ws://[::1]:8080/ws").unwrap();
        assert_eq!(t.http_base, "http://[::1]:8080");
        assert_eq!(
            one("ws://localhost:8080").unwrap().addr.to_string(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn anything_off_loopback_is_refused() {
        assert!(matches!(
            one("ws://10.0.0.1:8080"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            one("ws://192.168.1.5:80/ws"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            one("ws://[2001:db8::1]:80"),
            Err(TargetError::NotLoopback { .. })
        ));
        assert!(matches!(
            one("ws://example.com:80"),
            Err(TargetError::HostName(_))
        ));
        assert!(matches!(
            one("wss://127.0.0.1:443"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            one("ws://127.0.0.1"),
            Err(TargetError::Malformed(_))
        ));
        assert_eq!(parse_targets(&[]), Err(TargetError::None));
    }
}
