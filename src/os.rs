//! The few things ringcast asks the operating system for directly: the wall clock, kernel
//! randomness, and a socket's peer address.
//!
//! A leaf: no ringcast imports, no state. Safe to call from any thread (cores, the storage
//! thread, the NATS bridge).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in microseconds since the Unix epoch (0 if the clock is before 1970).
/// Message `ts` values and schedule times come from here.
#[inline]
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Wall-clock time in milliseconds since the Unix epoch.
#[inline]
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// 64 bits from the kernel's CSPRNG (`getrandom(2)`): session ids, which must be
/// unguessable because presenting one resumes a session, and node ids.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    // getrandom does not fail for 8 bytes once the kernel's pool is initialised (any time
    // after boot); should it anyway, fall back to std's randomly keyed hasher.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_us());
    h.write_u32(std::process::id());
    h.finish()
}

/// The peer address of socket `fd` (`getpeername(2)`), or `None` (-1, not connected, not an
/// IP socket). Read when asked (`/connz`), so that connections do not carry it.
pub fn peer_addr(fd: i32) -> Option<SocketAddr> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the caller's fd is open for the duration of the call (a registered connection's
    // socket); getpeername(2) only reads it.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// True for a loopback peer (`127.0.0.0/8`, `::1`, or IPv4 loopback mapped into IPv6).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_past_2020_and_moves_forward() {
        let a = now_us();
        assert!(a > 1_577_836_800_000_000, "{a}");
        assert!(now_us() >= a);
        assert_eq!(now_ms() / 1000, now_us() / 1_000_000);
    }

    #[test]
    fn random_values_differ() {
        let v: Vec<u64> = (0..8).map(|_| random_u64()).collect();
        let mut d = v.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), v.len(), "{v:?}");
    }
}
