//! Source addresses for client sockets.
//!
//! One source address gives about 28,000 ephemeral ports toward one
//! destination; binding client sockets round-robin to several 127.0.0.x
//! addresses multiplies that. Linux routes all of 127.0.0.0/8 to the
//! loopback interface, so no setup is needed. Only loopback addresses are
//! accepted, for the same reason targets must be loopback.

use std::net::{IpAddr, Ipv4Addr};

/// Why a `--bind` list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BindError {
    /// An entry is not an address or a range.
    #[error("--bind: {0:?} is not an address or a range like 127.0.0.1-8")]
    Malformed(String),
    /// An address outside loopback.
    #[error("--bind: {0} is not a loopback address (127.0.0.0/8 or ::1)")]
    NotLoopback(IpAddr),
    /// A range whose end is before its start.
    #[error("--bind: range {0:?} is empty")]
    EmptyRange(String),
    /// Nothing given.
    #[error("--bind: no address given")]
    None,
}

/// Parses `127.0.0.1,127.0.0.2`, `127.0.0.1-8` (last octet) or
/// `127.0.0.1-127.0.0.8`, in any mix, deduplicated in order.
pub(crate) fn parse_binds(spec: &str) -> Result<Vec<IpAddr>, BindError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        for ip in parse_part(part)? {
            if !ip.is_loopback() {
                return Err(BindError::NotLoopback(ip));
            }
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        return Err(BindError::None);
    }
    Ok(out)
}

fn parse_part(part: &str) -> Result<Vec<IpAddr>, BindError> {
    let malformed = || BindError::Malformed(part.to_owned());
    let Some((start, end)) = part.split_once('-') else {
        return Ok(vec![part.parse().map_err(|_| malformed())?]);
    };
    let start: Ipv4Addr = start.trim().parse().map_err(|_| malformed())?;
    let end = end.trim();
    let last: u8 = match end.parse::<Ipv4Addr>() {
        Ok(e) if e.octets()[..3] == start.octets()[..3] => e.octets()[3],
        Ok(_) => return Err(malformed()),
        Err(_) => end.parse().map_err(|_| malformed())?,
    };
    let [a, b, c, first] = start.octets();
    if last < first {
        return Err(BindError::EmptyRange(part.to_owned()));
    }
    Ok((first..=last)
        .map(|d| IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        .collect())
}

/// The addresses process `index` of `count` binds to: a disjoint slice when
/// there are enough addresses, otherwise one address shared round-robin.
pub(crate) fn share(addrs: &[IpAddr], index: usize, count: usize) -> Vec<IpAddr> {
    if addrs.is_empty() || count == 0 {
        return addrs.to_vec();
    }
    if addrs.len() < count {
        return vec![addrs[index % addrs.len()]];
    }
    addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % count == index)
        .map(|(_, a)| *a)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lists_and_ranges_parse() {
        assert_eq!(parse_binds("127.0.0.1").unwrap(), ips(&["127.0.0.1"]));
        assert_eq!(
            parse_binds("127.0.0.1, 127.0.0.2,127.0.0.1").unwrap(),
            ips(&["127.0.0.1", "127.0.0.2"])
        );
        assert_eq!(
            parse_binds("127.0.0.1-3").unwrap(),
            ips(&["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        );
        assert_eq!(
            parse_binds("127.0.1.4-127.0.1.5,::1").unwrap(),
            ips(&["127.0.1.4", "127.0.1.5", "::1"])
        );
    }

    #[test]
    fn off_loopback_and_nonsense_are_refused() {
        assert_eq!(
            parse_binds("10.0.0.1"),
            Err(BindError::NotLoopback("10.0.0.1".parse().unwrap()))
        );
        assert!(matches!(
            parse_binds("127.0.0.254-10.0.0.1"),
            Err(BindError::Malformed(_))
        ));
        assert!(matches!(
            parse_binds("127.0.0.5-2"),
            Err(BindError::EmptyRange(_))
        ));
        assert!(matches!(parse_binds("eth0"), Err(BindError::Malformed(_))));
        assert_eq!(parse_binds(" , "), Err(BindError::None));
    }

    #[test]
    fn shares_are_disjoint_when_possible() {
        let all = ips(&["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]);
        assert_eq!(share(&all, 0, 2), ips(&["127.0.0.1", "127.0.0.3"]));
        assert_eq!(share(&all, 1, 2), ips(&["127.0.0.2", "127.0.0.4"]));
        assert_eq!(share(&all[..1], 1, 3), ips(&["127.0.0.1"]));
        assert_eq!(share(&all[..2], 2, 3), ips(&["127.0.0.1"]));
    }
}
