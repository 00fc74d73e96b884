//! Server-side measures read from `/proc`: resident memory and CPU time of
//! the node processes given with `--node-pid`.
//!
//! Reading `/proc` directly (instead of asking the node) measures what the
//! kernel charges to the process — allocator slack, thread stacks and socket
//! buffers included — which is what a cluster is sized by.

use std::fs;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. This is
/// the kernel's `USER_HZ`, fixed at 100 in the Linux ABI on every mainstream
/// architecture; asking `sysconf` would need `unsafe`, which the workspace forbids.
pub(crate) const TICKS_PER_SEC: f64 = 100.0;

/// Why a process could not be measured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The process does not exist or `/proc` is unreadable.
    #[error("cannot read /proc/{pid}/{file}: {source}")]
    Read {
        /// The pid.
        pid: u32,
        /// `status` or `stat`.
        file: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format {
        /// The pid.
        pid: u32,
        /// `status` or `stat`.
        file: &'static str,
    },
}

fn read(pid: u32, file: &'static str) -> Result<String, ProcError> {
    fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
        pid,
        file,
        source,
    })
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    parse_vmrss(&read(pid, "status")?).ok_or(ProcError::Format {
        pid,
        file: "status",
    })
}

/// User plus system CPU time in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    parse_cpu_ticks(&read(pid, "stat")?).ok_or(ProcError::Format { pid, file: "stat" })
}

/// Summed VmRSS of several processes, KiB.
pub(crate) fn rss_kib_sum(pids: &[u32]) -> Result<u64, ProcError> {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

/// Summed CPU time of several processes, clock ticks.
pub(crate) fn cpu_ticks_sum(pids: &[u32]) -> Result<u64, ProcError> {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

/// The system-wide count of connections dropped because a listener's
/// accept queue was full (`TcpExt: ListenOverflows` of `/proc/net/netstat`).
/// Each one costs a client a SYN retransmit (1 s), so a rise during the
/// opening phase explains a slow connect rate. `None` when unreadable.
pub(crate) fn listen_overflows() -> Option<u64> {
    parse_listen_overflows(&fs::read_to_string("/proc/net/netstat").ok()?)
}

fn parse_listen_overflows(netstat: &str) -> Option<u64> {
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = tcp_ext.next()?;
    let values = tcp_ext.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces;
    // fields are counted after its closing parenthesis, which starts at field 3.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tfanout\nVmPeak:\t  100 kB\nVmRSS:\t   5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(5120));
        let stat = "1234 (fan out) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 17\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_listen_overflows(netstat), Some(17));
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(rss_kib(u32::MAX).is_err());
    }
}
