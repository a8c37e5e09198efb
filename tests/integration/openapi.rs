//! docs/openapi.yaml against the agent: the documented operations are exactly the routes the
//! agent serves (`kpulse routes`, printed from the one route table that gates the router),
//! each of them answers on a real agent, the document validates with openapi-spec-validator,
//! and schemathesis (both from PyPI, `scripts/api-tools.sh`) fuzzes a running agent from it
//! with no 5xx and no crash.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use kpulse_integration_tests::{Agent, kpulse_bin, plugin_wasm, root};
use serde_json::Value;

/// The venv's bin directory with openapi-spec-validator, schemathesis and PyYAML.
fn api_tools() -> PathBuf {
    let out = Command::new(root().join("scripts/api-tools.sh"))
        .output()
        .expect("scripts/api-tools.sh");
    assert!(
        out.status.success(),
        "scripts/api-tools.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn document_path() -> PathBuf {
    root().join("docs/openapi.yaml")
}

/// The document as JSON (PyYAML from the venv: the tests crate has no YAML parser).
fn document(tools: &std::path::Path) -> Value {
    let out = Command::new(tools.join("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(document_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `METHOD /template` pairs the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// `METHOD /template` pairs the agent serves, from `kpulse routes`.
fn served() -> BTreeSet<(String, String)> {
    let out = Command::new(kpulse_bin()).arg("routes").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (method, template) = line.split_once(' ').expect("METHOD TEMPLATE");
            (method.to_owned(), template.to_owned())
        })
        .collect()
}

/// Sends a request and reads the status line and what arrives within a second: enough for
/// the envelope of an ordinary reply and the head of an event stream, which never ends.
fn probe(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => break, // the read timeout: a stream that stays open
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn the_openapi_document_is_the_served_route_table_and_validates() {
    let tools = api_tools();

    // A real validator on the document.
    let out = Command::new(tools.join("openapi-spec-validator"))
        .arg(document_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Both ways: a served route missing from the document, or a documented one the agent
    // does not serve, fails with its name.
    let doc = document(&tools);
    let documented = documented(&doc);
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}; documented but not served: {unserved:?}"
    );
    assert!(served.len() >= 20, "{served:?}");

    // Each listed route really reaches a handler on a running agent: the router's own
    // refusals (404 "no such endpoint", 405) carry the error code "request".
    let agent = Agent::start("openapi-routes", &[plugin_wasm("example")], "");
    agent.wait_state("example", "running", Duration::from_secs(30));
    for (method, template) in &served {
        let path = template
            .replace("{name}", "example")
            .replace("{action}", "start")
            .replace("{id}", "no-such-task")
            .replace("{file}", "no-such-document.svg");
        let body = if method == "POST" { "{}" } else { "" };
        let (status, reply) = probe(agent.addr, method, &path, body);
        println!("{method} {path} -> {status}");
        assert!(status != 0, "{method} {path}: no reply");
        assert!(
            status != 405 && !(status == 404 && reply.contains("\"code\":\"request\"")),
            "{method} {path} is in the route table but the router refused it: {reply}"
        );
    }
    // And the table gates the router: a path or a method it does not list is refused.
    let (status, reply) = probe(agent.addr, "GET", "/no/such/route", "");
    assert_eq!(status, 404, "{reply}");
    assert!(reply.contains("no such endpoint"), "{reply}");
    let (status, reply) = probe(agent.addr, "DELETE", "/metrics", "");
    assert_eq!(status, 405, "{reply}");
}

/// How many cases schemathesis reports having generated: the line after `Test cases:`,
/// e.g. `894 generated, 894 passed`.
fn cases_run(output: &str) -> Option<u64> {
    let mut lines = output.lines().skip_while(|l| l.trim() != "Test cases:");
    lines.next()?;
    let (number, rest) = lines.next()?.trim().split_once(' ')?;
    rest.starts_with("generated")
        .then(|| number.replace(',', "").parse().ok())
        .flatten()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn schemathesis_finds_no_server_error() {
    let tools = api_tools();
    // The fuzzer sends hundreds of requests a second from one address: no rate limit here
    // (its 429s are tested in http_hardening.rs).
    let mut agent = Agent::start(
        "openapi-fuzz",
        &[
            plugin_wasm("example"),
            plugin_wasm("loadavg"),
            plugin_wasm("dropwatch"),
        ],
        "[http]\nrate_limit_per_second = 0\n",
    );
    for name in ["example", "loadavg", "dropwatch"] {
        agent.wait_state(name, "running", Duration::from_secs(60));
    }
    let report = agent.dir.join("schemathesis");
    let out = Command::new(tools.join("schemathesis"))
        .current_dir(&agent.dir)
        .arg("run")
        .arg(document_path())
        .arg("--url")
        .arg(format!("http://{}", agent.addr))
        // The two event streams never end; a fuzzer waiting for their bodies would only time
        // out (status_page.rs and the SSE tests cover them).
        .args(["--exclude-path", "/events/watch"])
        .args(["--exclude-path", "/v1/events/watch"])
        // Every check but positive_data_acceptance: a schema cannot say that a pid must
        // exist or that a duration is under the configured limit, so valid-looking bodies
        // are rightly refused with 400/404.
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "40"])
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--seed", "1"])
        .arg("--no-color")
        .arg("--report-dir")
        .arg(&report)
        .output()
        .unwrap();
    let output = text(&out);
    println!("{output}");
    let cases = cases_run(&output);
    println!("schemathesis: {cases:?} cases");
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{output}"
    );
    assert!(
        cases.is_some_and(|n| n >= 300),
        "schemathesis ran too few cases: {cases:?}\n{output}"
    );
    // No crash: the agent is still up and answering.
    assert!(agent.child.try_wait().unwrap().is_none(), "{}", agent.log());
    assert_eq!(agent.get("/healthz").status, 204);
    assert!(
        !agent.log().contains("panicked"),
        "the agent panicked: {}",
        agent.log()
    );
}
