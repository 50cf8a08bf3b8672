//! The kernel's FUSE request timeout (Linux 6.14+): when a request goes unanswered longer than
//! it, the kernel aborts the whole connection and every island gives "Transport endpoint is
//! not connected". Admins set `/proc/sys/fs/fuse/default_request_timeout` (the default for
//! every connection) and `max_request_timeout` (a cap on what a server may declare); a server
//! may declare its own in FUSE_INIT. cab reads both at mount, declares one where the kernel
//! lets it, and answers every waiting request before the timeout in force runs out.

use std::time::Duration;

/// What the sysctls say, and what the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTimeout {
    /// `default_request_timeout`, seconds (0: none).
    pub kernel_default: u32,
    /// `max_request_timeout`, seconds (0: no cap).
    pub kernel_max: u32,
    /// `--request-timeout`: what cab declares (None: the kernel's default, if any).
    pub asked: Option<u16>,
}

fn sysctl(name: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/fs/fuse/{name}"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

impl RequestTimeout {
    /// Reads the sysctls now (absent on older kernels: no timeout).
    pub fn read(asked: Option<u16>) -> RequestTimeout {
        RequestTimeout {
            kernel_default: sysctl("default_request_timeout"),
            kernel_max: sysctl("max_request_timeout"),
            asked,
        }
    }

    /// What cab declares in FUSE_INIT: what the user asked, else the admin's default (cab
    /// keeps the protection the admin chose, and says so to the kernel), capped by the max.
    pub fn declared(&self) -> Option<u16> {
        let wanted = match self.asked {
            Some(asked) => u32::from(asked),
            None if self.kernel_default > 0 => self.kernel_default,
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

    fn t(kernel_default: u32, kernel_max: u32, asked: Option<u16>) -> RequestTimeout {
        RequestTimeout {
            kernel_default,
            kernel_max,
            asked,
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
    fn the_admins_default_is_kept_and_the_max_caps() {
        assert_eq!(t(15, 0, None).declared(), Some(15));
        assert_eq!(t(15, 0, None).in_force(true), Some(Duration::from_secs(15)));
        assert_eq!(t(15, 0, None).in_force(false), Some(Duration::from_secs(15)));
        assert_eq!(t(15, 10, None).in_force(false), Some(Duration::from_secs(10)));
        assert_eq!(t(0, 10, None).in_force(false), Some(Duration::from_secs(10)));
        assert_eq!(t(15, 10, Some(600)).declared(), Some(10));
        assert_eq!(t(15, 0, Some(600)).in_force(true), Some(Duration::from_secs(600)));
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
