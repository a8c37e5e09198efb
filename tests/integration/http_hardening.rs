//! The HTTP API's hardening as node_exporter users expect it: a node_exporter web-config
//! file (TLS with certificates made by the openssl CLI, bcrypt basic auth) scraped by a real
//! Prometheus; wrong credentials get 401 and a down target; plain HTTP to the TLS port fails;
//! a body over the limit gets 413; a slowloris client is cut off while others are served;
//! the rate limit answers 429 and is counted; a bad web config stops the agent at start-up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kpulse_integration_tests::{
    Agent, http, install, kpulse_bin, logged_listen_addr, plugin_wasm, sample, sample_with,
    scratch_dir, wait_for,
};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl CLI must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kpulse test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A kpulse process started with a config whose `[http]` names `web_config`; the API is
/// HTTPS, so the harness's plain `Agent` (which polls `/readyz` over HTTP) cannot start it.
struct SecureAgent {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl SecureAgent {
    fn start(dir: &Path, web_config: &Path, plugins: &[PathBuf]) -> SecureAgent {
        let plugin_dir = dir.join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for plugin in plugins {
            install(&plugin_dir, plugin);
        }
        let config = dir.join("kpulse.toml");
        std::fs::write(
            &config,
            format!(
                "plugin_dir = {plugin_dir:?}\ndata_dir = {:?}\nregion = \"test\"\n[http]\nweb_config_file = {web_config:?}\n",
                dir.join("data")
            ),
        )
        .unwrap();
        let log = dir.join("agent.log");
        let mut child = Command::new(kpulse_bin())
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = wait_for(
            Duration::from_secs(60),
            "the agent's listen address",
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "agent exited with {status}: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                logged_listen_addr(&std::fs::read_to_string(&log).unwrap_or_default())
            },
        );
        SecureAgent { child, addr, log }
    }
}

impl Drop for SecureAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTPS request with curl: (status, headers, body).
fn curl(dir: &Path, url: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            "ca.crt",
            "-D",
            "-",
            "-o",
            "body.out",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl must be installed");
    let headers = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = std::fs::read_to_string(dir.join("body.out")).unwrap_or_default();
    (status, headers, body)
}

/// Requests answered with `status`, over every route.
fn answered(metrics: &str, status: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("kpulse_http_server_requests_total{"))
        .filter(|l| l.contains(&format!("status=\"{status}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    let dir = scratch_dir("http-tls");
    make_certs(&dir);
    let hash = bcrypt::hash("scrape-secret", 10).unwrap();
    let web_config = dir.join("web.yml");
    std::fs::write(
        &web_config,
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"),
    )
    .unwrap();
    let agent = SecureAgent::start(&dir, &web_config, &[plugin_wasm("loadavg")]);
    let base = format!("https://{}", agent.addr);

    // Every endpoint needs credentials, and wrong ones get 401 with the Basic challenge.
    for path in ["/metrics", "/healthz", "/plugins", "/"] {
        let (status, headers, _) = curl(&dir, &format!("{base}{path}"), &[]);
        assert_eq!(status, 401, "{path} without credentials: {headers}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{headers}"
        );
    }
    let (status, ..) = curl(
        &dir,
        &format!("{base}/metrics"),
        &["-u", "prometheus:wrong"],
    );
    assert_eq!(status, 401);
    let (status, ..) = curl(
        &dir,
        &format!("{base}/metrics"),
        &["-u", "nobody:scrape-secret"],
    );
    assert_eq!(status, 401);
    wait_for(Duration::from_secs(60), "readyz over TLS", || {
        let (status, ..) = curl(
            &dir,
            &format!("{base}/readyz"),
            &["-u", "prometheus:scrape-secret"],
        );
        (status == 204).then_some(())
    });

    // Plain HTTP to the TLS port gets no HTTP answer, and the failed handshake is counted.
    let plain = http(agent.addr, "GET", "/metrics", &[]);
    assert!(
        plain.as_ref().map_or(true, |r| r.status == 0),
        "plain HTTP answered: {plain:?}"
    );
    let (status, _, metrics) = curl(
        &dir,
        &format!("{base}/metrics"),
        &["-u", "prometheus:scrape-secret"],
    );
    assert_eq!(status, 200, "{metrics}");
    assert!(
        sample(&metrics, "kpulse_http_server_tls_handshake_errors_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(answered(&metrics, "401") >= 3.0, "{metrics}");

    // A real Prometheus: one job with the right password, one with a wrong one.
    let ca = dir.join("ca.crt");
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: {password}\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr,
            ca = ca.display()
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
        job("kpulse_tls", "scrape-secret"),
        job("kpulse_wrong", "not-the-password")
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let pid = prometheus.id();
    let result = std::panic::catch_unwind(|| {
        let port = wait_for(Duration::from_secs(60), "Prometheus to listen", || {
            kpulse_integration_tests::listening_ports(pid)
                .first()
                .copied()
        });
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let query = |q: &str| -> Option<serde_json::Value> {
            let response = http(server, "GET", q, &[]).ok()?;
            serde_json::from_str(&response.body).ok()
        };
        let load = wait_for(
            Duration::from_secs(90),
            "kpulse_loadavg_load1 through Prometheus",
            || {
                let json =
                    query("/api/v1/query?query=kpulse_loadavg_load1%7Bjob%3D%22kpulse_tls%22%7D")?;
                json["data"]["result"].as_array()?.first().cloned()
            },
        );
        assert_eq!(load["metric"]["region"], "test");
        let up = wait_for(Duration::from_secs(30), "up of the TLS job", || {
            let json = query("/api/v1/query?query=up%7Bjob%3D%22kpulse_tls%22%7D")?;
            json["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        });
        assert_eq!(up, "1");
        let wrong = wait_for(
            Duration::from_secs(60),
            "the wrong-password target to be down",
            || {
                let json = query("/api/v1/targets")?;
                json["data"]["activeTargets"]
                    .as_array()?
                    .iter()
                    .find(|t| t["labels"]["job"] == "kpulse_wrong" && t["health"] == "down")
                    .cloned()
            },
        );
        let error = wrong["lastError"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains("401"), "{error}");
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(panic) = result {
        eprintln!(
            "{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        eprintln!(
            "{}",
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn body_limit_and_slowloris() {
    let agent = Agent::start(
        "http-limits",
        &[],
        "[http]\nmax_request_body_kib = 1\nheader_read_timeout_secs = 2\n",
    );
    // Over the limit: 413 before the body is read, on any route.
    for path in ["/tasks", "/v1/events/watch", "/metrics"] {
        let mut stream = TcpStream::connect(agent.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n").unwrap();
        let mut head = String::new();
        let _ = stream.read_to_string(&mut head);
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
    }

    // A client sending its request head one byte every 500 ms is cut off after the 2 s
    // header timeout, while another client is served meanwhile.
    let mut slow = TcpStream::connect(agent.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_after = None;
    for byte in request {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() > Duration::from_millis(1500) => {
                // Ok(0) is the server's close; a timeout error just means nothing yet.
                if let Ok(0) = slow.read(&mut buf) {
                    closed_after = Some(started.elapsed());
                    break;
                }
            }
            Ok(n) if n > 0 => panic!(
                "slow client got an answer: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            _ => {}
        }
        assert_eq!(
            agent.get("/healthz").status,
            204,
            "others are served meanwhile"
        );
    }
    let closed_after = closed_after.expect("the slow client was never disconnected");
    assert!(
        closed_after >= Duration::from_millis(1800) && closed_after < Duration::from_secs(8),
        "disconnected after {closed_after:?}"
    );
    let metrics = agent.metrics();
    assert!(
        sample_with(
            &metrics,
            "kpulse_http_server_connections_closed_total",
            "reason=\"header_timeout\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

#[test]
fn rate_limit_answers_429_and_counts() {
    let agent = Agent::start(
        "http-rate",
        &[],
        "[http]\nrate_limit_per_second = 2\nrate_limit_burst = 5\n",
    );
    let statuses: Vec<u16> = (0..20).map(|_| agent.get("/healthz").status).collect();
    assert!(statuses.contains(&204), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = http(agent.addr, "GET", "/version", &[]).unwrap();
    if limited.status == 429 {
        assert!(
            limited
                .headers
                .to_ascii_lowercase()
                .contains("retry-after:"),
            "{}",
            limited.headers
        );
    }
    // The bucket refills; /metrics then shows the refusals.
    let metrics = wait_for(Duration::from_secs(10), "/metrics past the limit", || {
        let response = http(agent.addr, "GET", "/metrics", &[]).ok()?;
        (response.status == 200).then_some(response.body)
    });
    let refused = sample(&metrics, "kpulse_http_server_rate_limited_total").unwrap_or(0.0);
    let counted = statuses.iter().filter(|s| **s == 429).count() as f64;
    assert!(refused >= counted, "{refused} < {counted}: {metrics}");
    assert!(answered(&metrics, "429") >= counted, "{metrics}");
}

#[test]
fn bad_web_config_stops_the_agent_naming_the_key() {
    let dir = scratch_dir("http-bad-web-config");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let cases = [
        (
            "basic_auth_users:\n  prometheus: plaintext\n",
            "basic_auth_users.prometheus",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
        ),
        ("tls_server_config: [not, a, map\n", "web.yml"),
        ("basic_auth_user:\n  x: y\n", "basic_auth_user"),
    ];
    for (text, key) in cases {
        let web = dir.join("web.yml");
        std::fs::write(&web, text).unwrap();
        let out = Command::new(kpulse_bin())
            .args(["run", "--listen", "127.0.0.1:0", "--plugin-dir"])
            .arg(dir.join("plugins"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--web.config.file")
            .arg(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started");
        assert!(
            stderr.contains(key) && stderr.contains(&web.display().to_string()),
            "{text}: {stderr}"
        );
    }
}
