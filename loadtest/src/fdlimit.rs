//! The open-file limit of the generator process.
//!
//! Every client socket is a file descriptor. This machine's hard limit is
//! 20,000 per process, and the default soft limit is far lower, so the
//! generator raises its soft limit to the hard limit at start and refuses,
//! before connecting anything, a share of connections that cannot fit —
//! with the `--procs` that would make it fit.

/// Descriptors kept free for stdio, the runtime, HTTP clients and children.
pub(crate) const RESERVED: u64 = 100;

/// Raises the soft `NOFILE` limit to the hard limit; returns the soft limit
/// now in force (or the error, for the message).
pub(crate) fn raise() -> Result<u64, String> {
    rlimit::increase_nofile_limit(u64::MAX).map_err(|e| e.to_string())
}

/// Why a process cannot hold its share.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{share} connections in one process need about {needed} open files, but this process may \
     open {limit} (the hard limit); spread the run with --procs {procs} or more"
)]
pub(crate) struct ShareTooLarge {
    share: usize,
    needed: u64,
    limit: u64,
    procs: usize,
}

/// Checks that `share` connections fit under `limit`, and says which
/// `--procs` would spread `total` connections so that they do.
pub(crate) fn check_share(share: usize, total: usize, limit: u64) -> Result<(), ShareTooLarge> {
    let needed = share as u64 + RESERVED;
    if needed <= limit {
        return Ok(());
    }
    let per_proc = limit.saturating_sub(RESERVED).max(1);
    Err(ShareTooLarge {
        share,
        needed,
        limit,
        procs: (total as u64).div_ceil(per_proc) as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_over_the_limit_name_the_procs_needed() {
        assert!(check_share(19_000, 19_000, 20_000).is_ok());
        let err = check_share(50_000, 100_000, 20_000).unwrap_err();
        assert_eq!(err.procs, 6);
        assert!(err.to_string().contains("--procs 6"), "{err}");
    }

    #[test]
    fn raising_reports_a_limit() {
        assert!(raise().unwrap() > 0);
    }
}
