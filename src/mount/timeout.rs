//! The kernel's FUSE request timeout (Linux 6.14+): when a request goes unanswered longer than
//! it, the kernel aborts the whole connection and every island gives "Transport endpoint is
//! not connected". Admins set `/proc/sys/fs/fuse/default_request_timeout` (the default for
//! servers that declare none) and `max_request_timeout` (a cap on what a server may declare); a
//! server may declare its own in FUSE_INIT.
//!
//! The default is for servers that answer at once. cab's requests may wait for a fetch, which
//! its own limits already bound (`--max-time`, `--stall-timeout`), so where a timeout would be
//! in force cab declares one that covers those waits: a reader then waits for its tree as if
//! there were no timeout, and Ctrl-C still frees it. Only where the admin's hard cap is
//! shorter does a request that waits too long get EAGAIN (try again), before the cap ends the
//! connection; cab says so once at mount.

use std::time::Duration;

/// What the sysctls say, what the user asked for, and how long cab's own waits may last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTimeout {
    /// `default_request_timeout`, seconds (0: none).
    pub kernel_default: u32,
    /// `max_request_timeout`, seconds (0: no cap).
    pub kernel_max: u32,
    /// `--request-timeout`: what cab declares (None: what its waits need).
    pub asked: Option<u16>,
    /// The longest a request may wait for a fetch (its time limit, and the stall timeout of
    /// a file fetched from the remote on the way).
    pub waits: Duration,
}

fn sysctl(name: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/fs/fuse/{name}"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

impl RequestTimeout {
    /// Reads the sysctls now (absent on older kernels: no timeout); `waits` is how long cab's
    /// own waits may last.
    pub fn read(asked: Option<u16>, waits: Duration) -> RequestTimeout {
        RequestTimeout {
            kernel_default: sysctl("default_request_timeout"),
            kernel_max: sysctl("max_request_timeout"),
            asked,
            waits,
        }
    }

    /// The timeout that lets every wait end before it: the waits, the margin a budget keeps
    /// for the kernel's queue (a fifth), and a second.
    fn covering_waits(&self) -> u32 {
        let seconds = self.waits.as_secs().saturating_mul(5).div_ceil(4).saturating_add(1);
        seconds.min(u64::from(u16::MAX)) as u32
    }

    /// What cab declares in FUSE_INIT: what the user asked, else — where the kernel would
    /// otherwise apply a timeout — one that covers cab's own waits; capped by the max. With no
    /// timeout set anywhere cab declares none (no timeout at all suits it best).
    pub fn declared(&self) -> Option<u16> {
        let wanted = match self.asked {
            Some(asked) => u32::from(asked),
            None if self.kernel_default > 0 || self.kernel_max > 0 => self.covering_waits(),
            None => return None,
        };
        let wanted = if self.kernel_max > 0 {
            wanted.min(self.kernel_max)
        } else {
            wanted
        };
        (wanted > 0).then(|| wanted.min(u32::from(u16::MAX)) as u16)
    }

    /// The timeout the kernel applies, given whether it honours a declared one.
    pub fn in_force(&self, honours_declared: bool) -> Option<Duration> {
        let seconds = match self.declared().filter(|_| honours_declared) {
            Some(declared) => u32::from(declared),
            None if self.kernel_max > 0 && self.kernel_default > 0 => self.kernel_default.min(self.kernel_max),
            None if self.kernel_max > 0 => self.kernel_max,
            None => self.kernel_default,
        };
        (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)))
    }

    /// Whether a timeout of `limit` cuts cab's own waits short (then waits end in EAGAIN).
    pub fn cuts_waits(&self, limit: Duration) -> bool {
        Self::budget(limit) < self.waits
    }

    /// How long a request may wait under a timeout of `limit`: enough margin for the time it
    /// sat in the kernel's queue before cab read it.
    pub fn budget(limit: Duration) -> Duration {
        let margin = (limit / 5).max(Duration::from_secs(1));
        limit.saturating_sub(margin).max(Duration::from_millis(500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAITS: Duration = Duration::from_secs(1860);

    fn t(kernel_default: u32, kernel_max: u32, asked: Option<u16>) -> RequestTimeout {
        RequestTimeout {
            kernel_default,
            kernel_max,
            asked,
            waits: WAITS,
        }
    }

    #[test]
    fn no_sysctls_no_timeout() {
        assert_eq!(t(0, 0, None).declared(), None);
        assert_eq!(t(0, 0, None).in_force(true), None);
        assert_eq!(t(0, 0, Some(30)).in_force(true), Some(Duration::from_secs(30)));
        assert_eq!(t(0, 0, Some(30)).in_force(false), None, "an old kernel ignores it");
    }

    #[test]
    fn a_default_timeout_gives_way_to_one_covering_the_waits() {
        // 1860 s of waits: 2325 s declared, whose budget (less a fifth) is the waits.
        assert_eq!(t(15, 0, None).declared(), Some(2326));
        let in_force = t(15, 0, None).in_force(true).unwrap();
        assert_eq!(in_force, Duration::from_secs(2326));
        assert!(!t(15, 0, None).cuts_waits(in_force));
        assert!(RequestTimeout::budget(in_force) >= WAITS);
        // A kernel that does not take a declared timeout keeps its default, which cuts.
        assert_eq!(t(15, 0, None).in_force(false), Some(Duration::from_secs(15)));
        assert!(t(15, 0, None).cuts_waits(Duration::from_secs(15)));
    }

    #[test]
    fn the_admins_max_caps_everything() {
        assert_eq!(t(15, 10, None).declared(), Some(10));
        assert_eq!(t(0, 15, None).declared(), Some(15));
        assert_eq!(t(15, 10, None).in_force(false), Some(Duration::from_secs(10)));
        assert_eq!(t(0, 10, None).in_force(false), Some(Duration::from_secs(10)));
        assert_eq!(t(15, 10, Some(600)).declared(), Some(10));
        assert_eq!(t(15, 0, Some(600)).in_force(true), Some(Duration::from_secs(600)));
        assert!(t(0, 15, None).cuts_waits(Duration::from_secs(15)));
    }

    #[test]
    fn huge_waits_declare_the_largest_timeout_the_protocol_holds() {
        let mut long = t(15, 0, None);
        long.waits = Duration::from_secs(10 * 24 * 3600);
        assert_eq!(long.declared(), Some(u16::MAX));
    }

    #[test]
    fn budgets_leave_a_margin() {
        assert_eq!(RequestTimeout::budget(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(RequestTimeout::budget(Duration::from_secs(3)), Duration::from_secs(2));
        assert_eq!(
            RequestTimeout::budget(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            RequestTimeout::budget(Duration::from_secs(100)),
            Duration::from_secs(80)
        );
    }
}
