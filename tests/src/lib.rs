//! Test harness: starts the real `kpulse` binary with a private plugin and data directory,
//! listening on port 0 (the kernel picks a free port; the harness reads the bound address from
//! the agent's log, so no port is probed and handed over), and talks to it over real HTTP.
//!
//! Prerequisites (done by `scripts/test.sh`): `target/release/kpulse` and the components in
//! `target/plugins` and `target/test-guests` are built.

#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed setup step should panic"
)]

pub mod containers;
pub mod fault_proxy;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The agent binary under test.
pub fn kpulse_bin() -> PathBuf {
    std::env::var_os("KPULSE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/kpulse"))
}

/// A built-in plugin component.
pub fn plugin_wasm(name: &str) -> PathBuf {
    root().join(format!("target/plugins/{name}.wasm"))
}

/// A test-only guest component.
pub fn guest_wasm(name: &str) -> PathBuf {
    root().join(format!("target/test-guests/{name}.wasm"))
}

/// A fresh scratch directory.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kpulse-it-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where the harness starts agents by default: loopback, port 0.
pub const LOOPBACK_ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The TCP ports process `pid` listens on (its sockets in LISTEN state, from `/proc`): how a
/// test learns the port of a server it started on port 0 that does not report it.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Waits until the child process listens on a TCP port and returns it; panics with
/// `explain()` if the child exits first.
pub fn wait_listening(
    child: &mut Child,
    timeout: Duration,
    what: &str,
    explain: impl Fn() -> String,
) -> u16 {
    let pid = child.id();
    wait_for(timeout, &format!("{what} to listen"), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}: {}", explain());
        }
        listening_ports(pid).first().copied()
    })
}

/// Removes terminal colour sequences (`ESC [ ... m`), which the agent's log has.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                // Parameters up to the final byte (0x40..=0x7e).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The address the agent's HTTP API is bound to, from its log line
/// `HTTP API listening addr=<address>` (complete lines only: the line may be half-written).
pub fn logged_listen_addr(log: &str) -> Option<SocketAddr> {
    let log = strip_ansi(log);
    let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .filter(|line| line.contains("HTTP API listening"))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("addr="))
                .and_then(|addr| addr.parse().ok())
        })
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough for the agent's API.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers: head.to_owned(),
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A running agent; killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
}

impl Agent {
    /// Starts an agent with `plugins` (paths of components, copied in as `<stem>.wasm`, with
    /// `hot-v1`/`hot-v2` copied as `hot.wasm`) and extra config TOML, listening on loopback.
    pub fn start(label: &str, plugins: &[PathBuf], extra_config: &str) -> Agent {
        Agent::start_on(LOOPBACK_ANY_PORT, label, plugins, extra_config)
    }

    /// [`Agent::start`] with the API on `listen` (`--listen`; port 0 picks a free port).
    pub fn start_on(
        listen: SocketAddr,
        label: &str,
        plugins: &[PathBuf],
        extra_config: &str,
    ) -> Agent {
        let dir = scratch_dir(label);
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for plugin in plugins {
            install(&plugin_dir, plugin);
        }
        Agent::start_in_on(listen, dir, extra_config)
    }

    /// Starts an agent on an existing directory layout (for restarts), listening on loopback.
    pub fn start_in(dir: PathBuf, extra_config: &str) -> Agent {
        Agent::start_in_on(LOOPBACK_ANY_PORT, dir, extra_config)
    }

    /// [`Agent::start_in`] with the API on `listen`. With port 0 the kernel picks a free port
    /// and the harness learns it from the agent's log; `addr` is where to connect (loopback
    /// when `listen` is the unspecified address).
    pub fn start_in_on(listen: SocketAddr, dir: PathBuf, extra_config: &str) -> Agent {
        let plugin_dir = dir.join("plugins");
        let data_dir = dir.join("data");
        let config_path = dir.join("kpulse.toml");
        let config = format!(
            "plugin_dir = {plugin_dir:?}\ndata_dir = {data_dir:?}\nregion = \"test\"\n{extra_config}"
        );
        std::fs::write(&config_path, config).unwrap();
        // Truncated, so that a restart does not read the previous run's address.
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(kpulse_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--listen")
            .arg(listen.to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", kpulse_bin().display()));
        let mut agent = Agent {
            child,
            addr: listen,
            dir,
            plugin_dir,
            data_dir,
            config_path,
        };
        let bound = wait_for(
            Duration::from_secs(60),
            "the agent to log its listen address",
            || {
                if let Ok(Some(status)) = agent.child.try_wait() {
                    return Some(Err(status));
                }
                logged_listen_addr(&agent.log()).map(Ok)
            },
        );
        let mut addr = match bound {
            Ok(addr) => addr,
            Err(status) => panic!("agent exited with {status}: {}", agent.log()),
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        agent.addr = addr;
        let ready = wait_for(Duration::from_secs(60), "the agent to be ready", || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Some(Err(status));
            }
            match http(addr, "GET", "/readyz", &[]) {
                Ok(r) if r.status == 204 => Some(Ok(())),
                _ => None,
            }
        });
        if let Err(status) = ready {
            panic!("agent exited with {status}: {}", agent.log());
        }
        agent
    }

    pub fn get(&self, path: &str) -> Response {
        http(self.addr, "GET", path, &[]).unwrap()
    }

    pub fn put(&self, path: &str) -> Response {
        http(self.addr, "PUT", path, &[]).unwrap()
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        let body = body.to_string();
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (headers, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
        Response {
            status: headers
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            headers: headers.to_owned(),
            body: body.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// `GET /plugins` as JSON.
    pub fn plugins(&self) -> Vec<Value> {
        match self.get("/plugins").json() {
            Value::Array(plugins) => plugins,
            other => panic!("/plugins is not an array: {other}"),
        }
    }

    /// One plugin's entry, if loaded.
    pub fn plugin(&self, name: &str) -> Option<Value> {
        self.plugins().into_iter().find(|p| p["name"] == name)
    }

    /// Waits until `name` reports `state`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        wait_for(timeout, &format!("plugin {name} to be {state}"), || {
            self.plugin(name).filter(|p| p["state"] == state)
        })
    }

    /// `/metrics` in the classic text format.
    pub fn metrics(&self) -> String {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        response.body
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(mut self) -> PathBuf {
        self.terminate();
        self.dir.clone()
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Copies a component into a plugin directory the way operators should: write to a hidden
/// temporary name, then rename into place.
pub fn install(plugin_dir: &Path, component: &Path) {
    let stem = component
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let name = stem
        .strip_suffix("-v1")
        .or_else(|| stem.strip_suffix("-v2"))
        .unwrap_or(&stem);
    let tmp = plugin_dir.join(format!(".{name}.wasm.tmp"));
    std::fs::copy(component, &tmp).unwrap();
    std::fs::rename(&tmp, plugin_dir.join(format!("{name}.wasm"))).unwrap();
}

/// The value of the first sample whose line starts with `series` (name plus optional
/// label prefix, e.g. `kpulse_hot_marker{`), from text exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A sample selected by metric name and one `label="value"` pair.
pub fn sample_with(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .find_map(|line| line.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

/// Serializes tests that load programs named `kfree_skb`, so that counting the kernel's BPF
/// programs in one test is not disturbed by another test running in parallel.
pub fn kfree_skb_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serializes the tests that load the `rejected` guest (whose map, `kp_rejected`, they count).
pub fn rejected_guest_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ids of the kernel's BPF maps named `name` (`bpftool map show`; names are cut at 15 bytes).
pub fn bpf_map_ids_named(name: &str) -> Vec<u64> {
    let output = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .expect("bpftool (Debian package bpftool) must be installed");
    assert!(
        output.status.success(),
        "bpftool map show: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let maps: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Array(Vec::new()));
    maps.as_array()
        .map(|maps| {
            maps.iter()
                .filter(|m| m["name"] == name)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Serializes the tests that probe libc's `getsid` (programs named `on_getsid`).
pub fn getsid_probe_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Path of the system's libc, the target of the uprobe tests.
pub fn libc_path() -> &'static str {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libc.so.6 not found")
}

/// Names of the BPF programs process `pid` holds open: the `prog_id` of each of its
/// `anon_inode:bpf-prog` fds (`/proc/<pid>/fdinfo`), named by `bpftool prog show` (Debian's
/// bpftool lists no owning pids).
pub fn bpf_programs_of(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let is_prog = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let id = std::fs::read_to_string(fdinfo).ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        ids.extend(id);
    }
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool must be installed");
    let programs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}
