//! `kpulse plugins record` on the live kernel, then `kpulse plugins replay` offline: the
//! same documents come out, and replay needs neither BPF nor root.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kpulse_integration_tests::{kpulse_bin, plugin_wasm, scratch_dir};
use serde_json::Value;

fn documents(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn recorded_drops_replay_offline_without_root() {
    let _serial = kpulse_integration_tests::kfree_skb_lock();
    let dir = scratch_dir("record");
    let recording = dir.join("dropwatch.kprec");
    // UDP drops are only counted by default (HUATUO's filter is "tcp"): report them.
    let config = dir.join("kpulse.toml");
    std::fs::write(&config, "[plugins.dropwatch]\nprotocols = [\"udp\"]\n").unwrap();
    let mut recorder = Command::new(kpulse_bin())
        .args(["plugins", "record"])
        .arg(plugin_wasm("dropwatch"))
        .arg("--config")
        .arg(&config)
        .args(["--for", "4s"])
        .arg(&recording)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The recorder says `recording ...` once its plugin runs (programs attached); its stderr
    // goes on through a thread so that the lines can be waited for and kept for the asserts.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = recorder.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.starts_with("recording ") {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("the recorder did not start recording within 30 s: {log}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = recorder.wait().unwrap();
                panic!("the recorder exited ({status}) before recording: {log}")
            }
        }
    }
    // Drops to a closed port while the recorder runs.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..10 {
        let _ = sender.send_to(b"replay-me", ("127.0.0.1", port));
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = recorder.wait().unwrap();
    reader.join().unwrap();
    log.extend(lines.try_iter().map(|line| line + "\n"));
    assert!(status.success(), "{log}");
    assert!(log.contains("batches to"), "{log}");

    // Replay as root.
    let replay = Command::new(kpulse_bin())
        .args(["plugins", "replay"])
        .arg(plugin_wasm("dropwatch"))
        .arg(&recording)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let docs = documents(&replay.stdout);
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["tracer_data"]["drop_reason"] == "NO_SOCKET"
                && d["tracer_data"]["packet_len_bytes"] == 8 + 9
        })
        .collect();
    assert_eq!(
        ours.len(),
        10,
        "every recorded drop decodes again: {docs:?}"
    );
    assert!(
        ours[0]["tracer_data"]["drop_location"]
            .as_str()
            .unwrap()
            .contains("udp")
    );

    // Replay as an unprivileged user: no BPF, no root. (Names that need root to read, such
    // as drop-reason names from tracefs, fall back to numbers.)
    // Everything it touches is copied where that user can reach it.
    let plugin_copy = dir.join("dropwatch.wasm");
    let binary_copy = dir.join("kpulse");
    std::fs::copy(plugin_wasm("dropwatch"), &plugin_copy).unwrap();
    std::fs::copy(kpulse_bin(), &binary_copy).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    Command::new("chmod")
        .arg("1777")
        .arg(&tmp)
        .status()
        .unwrap();
    let unprivileged = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&binary_copy)
        .args(["plugins", "replay"])
        .arg(&plugin_copy)
        .arg(&recording)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(
        unprivileged.status.success(),
        "{}",
        String::from_utf8_lossy(&unprivileged.stderr)
    );
    let unprivileged_docs = documents(&unprivileged.stdout);
    assert_eq!(unprivileged_docs.len(), docs.len());
    assert!(
        unprivileged_docs
            .iter()
            .all(|d| d["tracer_name"] == "dropwatch")
    );
}
