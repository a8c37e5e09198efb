//! Receive timestamps on demand (the `rx-timestamps` capability).
//!
//! While any socket has asked for software RX timestamps the kernel timestamps every
//! received packet (`skb->tstamp`, the static key `netstamp_needed_key`), which
//! `net_rx_latency` needs and which costs every packet of the host a clock read. So the
//! agent holds one such socket, shared by every instance that needs it, and only while one
//! of them has a BPF object loaded: a plugin that attaches nothing (no container network
//! namespace to watch) leaves the host's packets untimestamped.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// The one socket, alive while some holder keeps its `Arc`.
static SHARED: Mutex<Weak<UdpSocket>> = Mutex::new(Weak::new());

/// A hold on the shared timestamping socket; timestamps stay on while any hold lives.
pub fn acquire() -> Option<Arc<UdpSocket>> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(socket) = shared.upgrade() {
        return Some(socket);
    }
    let socket = Arc::new(enable()?);
    *shared = Arc::downgrade(&socket);
    Some(socket)
}

/// A UDP socket with `SO_TIMESTAMPNS`.
fn enable() -> Option<UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    #[allow(
        unsafe_code,
        reason = "setsockopt has no std wrapper for SO_TIMESTAMPNS"
    )]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::warn!(err = %std::io::Error::last_os_error(), "cannot enable receive timestamps");
        return None;
    }
    Some(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_socket_is_shared_and_closed_with_its_last_hold() {
        let a = acquire().expect("a UDP socket on loopback");
        let b = acquire().expect("the same socket");
        assert!(Arc::ptr_eq(&a, &b));
        let port = a.local_addr().expect("bound").port();
        drop((a, b));
        let c = acquire().expect("a new socket");
        // The first one is gone: a second acquire made a fresh socket.
        assert!(c.local_addr().expect("bound").port() != port || Arc::strong_count(&c) == 1);
        assert_eq!(Arc::strong_count(&c), 1);
    }
}
