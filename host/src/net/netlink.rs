//! One bounded request/answer exchange on a netlink socket, and netlink attributes (`nla`)
//! for the families no crate covers (generic netlink's taskstats, DCB, RDMA `nldev`).
//!
//! Every exchange opens its own socket (no state shared between plugin threads), sets a
//! receive timeout and an overall deadline, and caps what it collects: a kernel that stops
//! answering costs a plugin call at most [`TIMEOUT`], never a hung thread.

use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr};

use super::NetError;

/// How long one exchange may take, all messages of a dump included: well under a plugin
/// call's default deadline (1 s), so a kernel that does not answer gives an error the
/// plugin can handle rather than a deadline trap. Answers take well under a millisecond.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// Most bytes one exchange collects (a dump of every qdisc of a big host is a few MiB).
const MAX_BYTES: usize = 64 * 1024 * 1024;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`, masked off an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One message of an answer: its type and its payload after the netlink header.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// Opens a socket of `protocol`; `what` names the family in errors.
fn open(protocol: isize, what: &str) -> Result<Socket, NetError> {
    let mut socket = Socket::new(protocol).map_err(|err| {
        // The family is not registered: a kernel built without it or a module not loaded.
        if err.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
            NetError::NotSupported(format!("{what}: this kernel has no such netlink family"))
        } else {
            NetError::Io(format!("{what}: open a netlink socket: {err}"))
        }
    })?;
    socket
        .bind_auto()
        .map_err(|err| NetError::Io(format!("{what}: bind: {err}")))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|err| NetError::Io(format!("{what}: connect: {err}")))?;
    set_receive_timeout(&socket, TIMEOUT)
        .map_err(|err| NetError::Io(format!("{what}: SO_RCVTIMEO: {err}")))?;
    Ok(socket)
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    #[allow(
        unsafe_code,
        reason = "setsockopt on a socket we own, with a timeval that outlives the call"
    )]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A request: netlink header of `kind` and `flags`, then `payload` (family header + attrs).
pub fn request(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    out.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it in
    out.extend_from_slice(payload);
    out.resize(align(len), 0);
    out
}

/// Sends `request` (built by [`request`]) on a new socket of `protocol` and collects the
/// answer: every message up to `NLMSG_DONE` for a dump, else the first one. A netlink error
/// answer becomes a [`NetError`] by its errno.
pub fn exchange(
    protocol: isize,
    what: &str,
    request: &[u8],
    dump: bool,
) -> Result<Vec<Message>, NetError> {
    let socket = open(protocol, what)?;
    socket
        .send(request, 0)
        .map_err(|err| NetError::from_errno(what, "send", &err))?;
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut collected = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(NetError::Io(format!(
                "{what}: no complete answer within {TIMEOUT:?}"
            )));
        }
        let size = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|err| NetError::from_errno(what, "receive", &err))?;
        collected += size;
        if collected > MAX_BYTES {
            return Err(NetError::Io(format!(
                "{what}: answer larger than {MAX_BYTES} bytes"
            )));
        }
        let mut rest = &buf[..size];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32_at(rest, 0) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(NetError::Io(format!(
                    "{what}: malformed answer (message length {len})"
                )));
            }
            let payload = &rest[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    // `struct nlmsgerr`: a negative errno, 0 for an acknowledgement.
                    let errno = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EIO);
                    if errno == 0 {
                        return Ok(out);
                    }
                    let err = std::io::Error::from_raw_os_error(-errno);
                    return Err(NetError::from_errno(what, "the kernel answered", &err));
                }
                _ => out.push(Message {
                    kind,
                    payload: payload.to_vec(),
                }),
            }
            if !dump {
                return Ok(out);
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
}

pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Appends one attribute.
pub fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + align(len) - len, 0);
}

/// The attributes in `bytes`, as `(type, payload)`; stops at the first malformed one.
pub fn attrs(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((kind, payload))
    })
}

/// The first attribute of type `kind`.
pub fn attr(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(bytes).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| {
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

/// A NUL-terminated string attribute.
pub fn string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut out = Vec::new();
        put_attr(&mut out, 1, b"eth0\0");
        put_attr(&mut out, 2, &7u32.to_ne_bytes());
        assert_eq!(out.len(), 12 + 8);
        let got: Vec<(u16, Vec<u8>)> = attrs(&out).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(got[0], (1, b"eth0\0".to_vec()));
        assert_eq!(got[1], (2, 7u32.to_ne_bytes().to_vec()));
        assert_eq!(string(attr(&out, 1).unwrap_or_default()), "eth0");
    }

    #[test]
    fn truncated_attributes_stop_the_walk() {
        let mut out = Vec::new();
        put_attr(&mut out, 1, &[1, 2, 3, 4]);
        out.extend_from_slice(&[200, 0, 2, 0]); // claims 200 bytes
        assert_eq!(attrs(&out).count(), 1);
    }
}
