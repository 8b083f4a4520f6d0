//! Start-up checks of the system limits that cap how many connections ringcast
//! can hold: the open-file limit (`RLIMIT_NOFILE`), locked memory for io_uring
//! (`RLIMIT_MEMLOCK`) and the kernel's listen-backlog cap
//! (`net.core.somaxconn`). Called once at start-up from the main thread, before
//! the per-core workers are spawned: first [`raise_nofile`], then [`check`],
//! whose warnings the caller logs. Nothing here logs or panics; every decision
//! is a small pure function over plain numbers so it can be unit-tested.

use std::fmt;
use std::io;

/// File descriptors kept free on top of one per connection (listeners, io_uring
/// rings, eventfds, stdio, log files).
pub const FD_HEADROOM: u64 = 64;

/// Locked memory that is enough for one io_uring per core on kernels that
/// charge rings to `RLIMIT_MEMLOCK` (8 MiB, the common systemd default).
pub const MIN_MEMLOCK_BYTES: u64 = 8 << 20;

/// First kernel (major, minor) that charges io_uring rings to the memory cgroup
/// instead of `RLIMIT_MEMLOCK` (commit 26bfa89e25f4, Linux 5.12).
const RINGS_MEMCG_SINCE: (u32, u32) = (5, 12);

const NOFILE: &str = "open-file limit (RLIMIT_NOFILE)";
const MEMLOCK: &str = "locked-memory limit (RLIMIT_MEMLOCK, bytes)";
const SOMAXCONN: &str = "net.core.somaxconn";

/// One start-up warning about a system limit that would cap ringcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitWarning {
    /// Which limit, e.g. `"net.core.somaxconn"`.
    pub limit: &'static str,
    /// Its current value; `u64::MAX` means unlimited.
    pub current: u64,
    /// The value ringcast needs.
    pub wanted: u64,
    /// Which setting raises it (unit directive or file under `tuning/`).
    pub hint: &'static str,
}

impl LimitWarning {
    /// What `wanted` is needed for, as the end of a sentence.
    fn purpose(&self) -> String {
        match self.limit {
            NOFILE => format!(
                "{} connections plus {FD_HEADROOM} spare fds",
                self.wanted.saturating_sub(FD_HEADROOM)
            ),
            MEMLOCK => "io_uring rings on kernels before 5.12".to_owned(),
            SOMAXCONN => "the listen backlog (longer backlogs are silently truncated)".to_owned(),
            _ => "ringcast".to_owned(),
        }
    }
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".to_owned()
    } else {
        v.to_string()
    }
}

impl fmt::Display for LimitWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.limit == NOFILE {
            // The limit that caps a default start on most machines: the command that lifts it,
            // and the flag that lives with it, rather than a pointer to a document.
            return write!(
                f,
                "{} is {}, below {} needed for {}: raise it with `sudo prlimit --pid $$ --nofile={}` in the shell that starts ringcast, or pass --max-connections {} (a service: {})",
                self.limit,
                show(self.current),
                show(self.wanted),
                self.purpose(),
                self.wanted,
                self.current.saturating_sub(FD_HEADROOM),
                self.hint
            );
        }
        write!(
            f,
            "{} is {}, below {} needed for {}; see tuning/README.md ({})",
            self.limit,
            show(self.current),
            show(self.wanted),
            self.purpose(),
            self.hint
        )
    }
}

/// Warning when the soft open-file limit cannot hold `max_connections` sockets
/// plus [`FD_HEADROOM`].
fn nofile_warning(soft: u64, max_connections: u64) -> Option<LimitWarning> {
    let wanted = max_connections.saturating_add(FD_HEADROOM);
    (soft < wanted).then_some(LimitWarning {
        limit: NOFILE,
        current: soft,
        wanted,
        hint: "LimitNOFILE= in tuning/ringcast.service",
    })
}

/// Warning when the soft locked-memory limit (bytes, `u64::MAX` = unlimited)
/// is below [`MIN_MEMLOCK_BYTES`] on a kernel that charges io_uring rings to it.
/// An unknown kernel version is treated as old.
fn memlock_warning(soft: u64, kernel: Option<(u32, u32)>) -> Option<LimitWarning> {
    if kernel.is_some_and(|k| k >= RINGS_MEMCG_SINCE) || soft >= MIN_MEMLOCK_BYTES {
        return None;
    }
    Some(LimitWarning {
        limit: MEMLOCK,
        current: soft,
        wanted: MIN_MEMLOCK_BYTES,
        hint: "LimitMEMLOCK=infinity in ringcast.service, memlock in limits.conf",
    })
}

/// Warning when `net.core.somaxconn` would truncate a `backlog`-long listen queue.
fn somaxconn_warning(somaxconn: u64, backlog: u32) -> Option<LimitWarning> {
    let wanted = u64::from(backlog);
    (somaxconn < wanted).then_some(LimitWarning {
        limit: SOMAXCONN,
        current: somaxconn,
        wanted,
        hint: "net.core.somaxconn in sysctl/throughput.conf",
    })
}

/// Parses the (major, minor) of a kernel release string such as
/// `"6.8.0-45-generic"`.
fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Parses the first number of a `/proc/sys` file's contents.
fn parse_proc_u64(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Converts an `rlim_t` to bytes/count, mapping `RLIM_INFINITY` to `u64::MAX`.
#[allow(clippy::useless_conversion)] // rlim_t is 32-bit on some targets
fn rlim_to_u64(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        u64::from(v)
    }
}

/// The resource limits this module reads (names differ in type across libcs).
#[derive(Clone, Copy)]
enum Resource {
    NoFile,
    MemLock,
}

/// Reads (soft, hard) of one resource limit.
fn get_rlimit(resource: Resource) -> io::Result<(u64, u64)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe {
        match resource {
            Resource::NoFile => libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl),
            Resource::MemLock => libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((rlim_to_u64(rl.rlim_cur), rlim_to_u64(rl.rlim_max)))
}

/// Checks RLIMIT_NOFILE against `max_connections` plus [`FD_HEADROOM`],
/// RLIMIT_MEMLOCK against [`MIN_MEMLOCK_BYTES`] (only on kernels before 5.12,
/// where io_uring rings are charged to it; unlimited counts as `u64::MAX`), and
/// `/proc/sys/net/core/somaxconn` against `backlog`. Returns one warning per
/// limit that is too low; a limit that cannot be read produces no warning.
pub fn check(max_connections: u64, backlog: u32) -> Vec<LimitWarning> {
    let mut out = Vec::new();
    if let Ok((soft, _)) = get_rlimit(Resource::NoFile) {
        out.extend(nofile_warning(soft, max_connections));
    }
    if let Ok((soft, _)) = get_rlimit(Resource::MemLock) {
        let kernel = read_proc("/proc/sys/kernel/osrelease")
            .as_deref()
            .and_then(parse_kernel_release);
        out.extend(memlock_warning(soft, kernel));
    }
    if let Some(somaxconn) = read_proc("/proc/sys/net/core/somaxconn")
        .as_deref()
        .and_then(parse_proc_u64)
    {
        out.extend(somaxconn_warning(somaxconn, backlog));
    }
    out
}

/// The soft RLIMIT_NOFILE to ask for: the hard limit, or `fs.nr_open` (the
/// kernel's ceiling; 1048576 if unknown) when the hard limit is unlimited.
fn nofile_target(soft: u64, hard: u64, nr_open: Option<u64>) -> u64 {
    let target = if hard == u64::MAX {
        nr_open.unwrap_or(1 << 20)
    } else {
        hard
    };
    target.max(soft)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit
/// (unchanged if it already was at the hard limit).
pub fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = get_rlimit(Resource::NoFile)?;
    let nr_open = read_proc("/proc/sys/fs/nr_open")
        .as_deref()
        .and_then(parse_proc_u64);
    let target = nofile_target(soft, hard, nr_open);
    if target == soft {
        return Ok(soft);
    }
    let to_rlim = |v: u64| {
        if v == u64::MAX {
            Ok(libc::RLIM_INFINITY)
        } else {
            libc::rlim_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        }
    };
    let rl = libc::rlimit {
        rlim_cur: to_rlim(target)?,
        rlim_max: to_rlim(hard)?,
    };
    // SAFETY: `rl` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_needs_connections_plus_headroom() {
        assert_eq!(nofile_warning(50_064, 50_000), None);
        assert_eq!(nofile_warning(u64::MAX, 50_000), None);
        let w = nofile_warning(50_063, 50_000).unwrap();
        assert_eq!((w.current, w.wanted), (50_063, 50_064));
        assert!(nofile_warning(0, u64::MAX).is_some(), "no overflow");
    }

    #[test]
    fn memlock_only_matters_before_5_12() {
        assert_eq!(memlock_warning(64 << 10, Some((6, 8))), None);
        assert_eq!(memlock_warning(64 << 10, Some((5, 12))), None);
        assert_eq!(memlock_warning(MIN_MEMLOCK_BYTES, Some((5, 4))), None);
        assert_eq!(memlock_warning(u64::MAX, None), None);
        let w = memlock_warning(64 << 10, Some((5, 11))).unwrap();
        assert_eq!((w.current, w.wanted), (64 << 10, MIN_MEMLOCK_BYTES));
        assert!(
            memlock_warning(64 << 10, None).is_some(),
            "unknown kernel = old"
        );
    }

    #[test]
    fn somaxconn_against_backlog() {
        assert_eq!(somaxconn_warning(4096, 4096), None);
        assert_eq!(somaxconn_warning(65535, 1024), None);
        let w = somaxconn_warning(4096, 65535).unwrap();
        assert_eq!(
            (w.limit, w.current, w.wanted),
            ("net.core.somaxconn", 4096, 65535)
        );
    }

    #[test]
    fn parses_kernel_release() {
        assert_eq!(parse_kernel_release("6.8.0-45-generic\n"), Some((6, 8)));
        assert_eq!(parse_kernel_release("5.11.22"), Some((5, 11)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_kernel_release("6"), None);
        assert_eq!(parse_kernel_release("linux"), None);
    }

    #[test]
    fn parses_proc_values() {
        assert_eq!(parse_proc_u64("4096\n"), Some(4096));
        assert_eq!(parse_proc_u64("32768\t60999\n"), Some(32768));
        assert_eq!(parse_proc_u64(""), None);
        assert_eq!(parse_proc_u64("abc"), None);
    }

    #[test]
    fn nofile_target_is_hard_or_nr_open() {
        assert_eq!(nofile_target(1024, 524_288, Some(1 << 20)), 524_288);
        assert_eq!(nofile_target(1024, u64::MAX, Some(2 << 20)), 2 << 20);
        assert_eq!(nofile_target(1024, u64::MAX, None), 1 << 20);
        assert_eq!(nofile_target(4096, 4096, None), 4096);
    }

    #[test]
    fn display_is_one_line_with_hint() {
        let w = nofile_warning(1024, 50_000).unwrap();
        assert_eq!(
            w.to_string(),
            "open-file limit (RLIMIT_NOFILE) is 1024, below 50064 needed for 50000 \
             connections plus 64 spare fds: raise it with `sudo prlimit --pid $$ \
             --nofile=50064` in the shell that starts ringcast, or pass --max-connections 960 \
             (a service: LimitNOFILE= in tuning/ringcast.service)"
        );
        let m = memlock_warning(0, None).unwrap();
        assert!(m.to_string().ends_with(
            "see tuning/README.md (LimitMEMLOCK=infinity in ringcast.service, memlock in limits.conf)"
        ));
        let m = LimitWarning {
            current: u64::MAX,
            ..memlock_warning(0, None).unwrap()
        };
        assert!(m
            .to_string()
            .starts_with("locked-memory limit (RLIMIT_MEMLOCK, bytes) is unlimited"));
        assert!(!m.to_string().contains('\n'));
    }

    #[test]
    fn check_and_raise_run_on_this_host() {
        let raised = raise_nofile().expect("getrlimit/setrlimit");
        let (soft, _) = get_rlimit(Resource::NoFile).unwrap();
        assert_eq!(raised, soft);
        // No connections and no backlog can never be capped by NOFILE/somaxconn.
        assert!(check(0, 0).iter().all(|w| w.limit == MEMLOCK));
    }
}
