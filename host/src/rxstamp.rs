//! Receive timestamps on demand (the `rx-timestamps` capability).

/// A UDP socket with `SO_TIMESTAMPNS`: while any such socket exists the kernel timestamps
/// every received packet (`skb->tstamp`), which `net_rx_latency` needs. Held open by the
/// instance that asked for it.
pub fn enable() -> Option<std::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
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
