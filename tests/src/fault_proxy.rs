//! A TCP proxy in front of a real OpenSearch node that injects the faults a real node cannot
//! be made to produce on demand: refused connections, answers slower than the client's
//! timeout, 429/500/503, garbage and truncated bodies. With [`Fault::None`] it copies bytes
//! both ways untouched, so everything else is the real node's behaviour. (The one mock the
//! fault matrix uses, for faults only; the standards allow that.)

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the proxy does to the connections accepted while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Copy both ways.
    None,
    /// Close every connection at once, before a byte is read: the node is down.
    Refuse,
    /// Forward the request (the node applies it) and hold the answer back this long.
    Slow(Duration),
    /// Answer every request with this status and an OpenSearch-shaped error body.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with a Content-Length the body never reaches.
    Truncated,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    /// Clones of the live client connections, shut down when the fault changes so that a
    /// kept-alive connection does not outlive the mode it was accepted in.
    live: Mutex<Vec<TcpStream>>,
    /// Requests or connections a fault was applied to.
    injected: AtomicU64,
}

/// A running proxy; its accept thread lives as long as the test process.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::None),
            live: Mutex::new(Vec::new()),
            injected: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let fault = *accepting
                    .fault
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Ok(clone) = client.try_clone() {
                    let mut live = accepting
                        .live
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    live.retain(|s| s.peer_addr().is_ok());
                    live.push(clone);
                }
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || serve(&shared, client, fault));
            }
        });
        FaultProxy { addr, shared }
    }

    /// `http://<addr>`, for the agent's `addresses`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the fault; live connections are cut so that the next request sees it.
    pub fn set(&self, fault: Fault) {
        *self
            .shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
        let mut live = self
            .shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stream in live.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// How many connections or requests a fault has been applied to so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }
}

fn serve(shared: &Shared, mut client: TcpStream, fault: Fault) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    match fault {
        Fault::None => forward(shared.upstream, client, None, &shared.injected),
        Fault::Slow(delay) => forward(shared.upstream, client, Some(delay), &shared.injected),
        Fault::Refuse => {
            shared.injected.fetch_add(1, Ordering::Relaxed);
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Status(_) | Fault::Garbage | Fault::Truncated => {
            while read_request(&mut client).is_some() {
                shared.injected.fetch_add(1, Ordering::Relaxed);
                let answer = match fault {
                    Fault::Status(code) => {
                        let body = format!(
                            r#"{{"error":{{"type":"injected_fault","reason":"fault proxy"}},"status":{code}}}"#
                        );
                        response(code, &body, body.len())
                    }
                    Fault::Garbage => {
                        let body = "<html>\u{0}\u{7f} not json";
                        response(200, body, body.len())
                    }
                    _ => response(200, r#"{"took":3,"errors":false,"items":[{"#, 4096),
                };
                if client.write_all(answer.as_bytes()).is_err() || fault == Fault::Truncated {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

fn response(code: u16, body: &str, content_length: usize) -> String {
    format!(
        "HTTP/1.1 {code} Injected\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n{body}"
    )
}

/// Reads one HTTP/1.1 request (head and a Content-Length or chunked body); `None` at the end
/// of the connection.
fn read_request(client: &mut TcpStream) -> Option<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(length) = length {
        let mut body = vec![0u8; length];
        client.read_exact(&mut body).ok()?;
    } else if head.contains("transfer-encoding: chunked") {
        let mut tail = Vec::new();
        while !tail.ends_with(b"0\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => tail.push(byte[0]),
                _ => return None,
            }
        }
    }
    Some(())
}

/// Copies client → upstream and upstream → client, holding each answer back `delay`.
fn forward(upstream: SocketAddr, client: TcpStream, delay: Option<Duration>, injected: &AtomicU64) {
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(delay) = delay {
            injected.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
        }
        if client_out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client_out.shutdown(Shutdown::Both);
}
