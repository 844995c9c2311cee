//! How many HTTP connections the process can afford: the configured cap,
//! lowered so that the open-file limit keeps room for the DICOM side
//! (associations, their spool files, sled), which must never fail to open
//! a file because the web side took every descriptor.

use crate::config::Config;

/// Descriptors an HTTP connection may hold at once: its socket and one
/// file (a download being served or an upload being spooled).
const FDS_PER_CONNECTION: u64 = 2;

/// Descriptors the process needs whatever the traffic: sled's files, the
/// listeners, logs, the runtime, the report fetcher's and S3 client's
/// sockets.
const BASE_FDS: u64 = 256;

/// Per association: the socket, the spool file being written, and slack
/// for the store and index while it is committed.
const FDS_PER_ASSOCIATION: u64 = 4;

/// The spool keeps a pool of pre-created files open.
const SPOOL_POOL_FDS: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the soft default of
/// 1024 is a leftover for `select(2)`; servers raise it) and returns the
/// soft limit now in effect, or `None` if it cannot be read.
pub fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur)
}

/// Descriptors kept for everything but HTTP connections.
pub fn reserved(cfg: &Config, spare_slots: usize) -> u64 {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    BASE_FDS
        .saturating_add(n(cfg.max_associations).saturating_mul(FDS_PER_ASSOCIATION))
        .saturating_add(n(cfg.max_pending_connections))
        .saturating_add(SPOOL_POOL_FDS)
        .saturating_add(n(cfg.report_fetch_concurrency).saturating_mul(2))
        .saturating_add(n(spare_slots))
}

/// The connection cap in effect: `configured`, or fewer when `nofile`
/// minus `reserved` descriptors cannot hold that many; at least one, and
/// no more than a semaphore counts.
pub fn connection_cap(configured: usize, nofile: Option<u64>, reserved: u64) -> usize {
    let affordable = nofile.map_or(usize::MAX, |nofile| {
        let n = nofile.saturating_sub(reserved) / FDS_PER_CONNECTION;
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    configured
        .min(affordable)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_dicom_side() {
        assert_eq!(connection_cap(1024, Some(1_048_576), 1000), 1024);
        assert_eq!(connection_cap(1024, Some(1024), 700), 162);
        assert_eq!(connection_cap(1024, Some(256), 700), 1);
        assert_eq!(connection_cap(1024, None, 700), 1024);
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        assert_eq!(connection_cap(usize::MAX, Some(u64::MAX), 0), most);
        assert_eq!(connection_cap(usize::MAX, None, 0), most);
        assert_eq!(connection_cap(0, Some(u64::MAX), u64::MAX), 1);
    }

    #[test]
    fn the_reserve_grows_with_the_dicom_settings_and_never_overflows() {
        let mut cfg = Config::default();
        let small = reserved(&cfg, 64);
        cfg.max_associations *= 2;
        assert!(reserved(&cfg, 64) > small);
        cfg.max_associations = usize::MAX;
        cfg.max_pending_connections = usize::MAX;
        assert_eq!(reserved(&cfg, usize::MAX), u64::MAX);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_nofile().expect("getrlimit");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
    }
}
