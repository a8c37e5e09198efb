#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn inspect_json(id: &str) -> String {
    format!(
        r#"{{"Id":"{id}","Name":"/web","State":{{"Status":"running","Running":true,"Pid":4242,
        "StartedAt":"2026-12-01T10:00:00.123Z"}},"Config":{{"Hostname":"0123456789ab",
        "Image":"kp-demo:latest","Labels":{{"app":"demo"}}}},"HostConfig":{{"NetworkMode":"none"}}}}"#
    )
}

#[test]
fn parses_inspect() {
    let c = parse_inspect("ctx", inspect_json(ID).as_bytes()).unwrap();
    assert_eq!(
        c,
        DockerContainer {
            id: ID.into(),
            name: "web".into(),
            image: "kp-demo:latest".into(),
            labels: [("app".to_owned(), "demo".to_owned())].into(),
            pid: 4242,
            hostname: "0123456789ab".into(),
            host_network: false,
            started_at: "2026-12-01T10:00:00.123Z".into(),
            running: true,
        }
    );
    // nulls, missing sections, host network.
    let c = parse_inspect(
        "ctx",
        br#"{"Id":"x","Name":null,"Config":{"Labels":null},"State":null,"HostConfig":{"NetworkMode":"host"}}"#,
    )
    .unwrap();
    assert!(c.labels.is_empty() && c.host_network && !c.running && c.pid == 0);
    // Garbage and an id-less object.
    assert_eq!(
        parse_inspect("ctx", b"\x00{").unwrap_err().kind(),
        "protocol"
    );
    assert_eq!(parse_inspect("ctx", b"{}").unwrap_err().kind(), "protocol");
    assert_eq!(parse_inspect("ctx", b"[1]").unwrap_err().kind(), "protocol");
}

#[test]
fn parses_events_and_splits_lines() {
    let line = format!(
        r#"{{"status":"start","id":"{ID}","from":"kp-demo","Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"app":"demo"}}}},"scope":"local","time":1,"timeNano":1}}"#
    );
    assert_eq!(
        parse_event(line.as_bytes()).unwrap(),
        Some(DockerEvent {
            action: "start".into(),
            id: ID.into()
        })
    );
    assert_eq!(
        parse_event(br#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"x"}}"#)
            .unwrap(),
        None
    );
    assert_eq!(
        parse_event(br#"{"Type":"network","Action":"start","Actor":{"ID":"x"}}"#).unwrap(),
        None
    );
    assert!(parse_event(b"{not json").is_err());

    let mut s = LineSplitter::default();
    s.push(b"a\nb");
    assert_eq!(s.next_line().unwrap(), Some(b"a".to_vec()));
    assert_eq!(s.next_line().unwrap(), None);
    assert!(s.finish().is_err());
    s.push(b"c\n");
    assert_eq!(s.next_line().unwrap(), Some(b"bc".to_vec()));
    assert!(s.finish().is_ok());
    s.push(&vec![b'x'; MAX_EVENT_LINE + 1]);
    assert!(s.next_line().is_err());
}

#[test]
fn encodes_paths() {
    assert_eq!(percent_encode("abc-1.2_x"), "abc-1.2_x");
    assert_eq!(percent_encode("a/b?c"), "a%2Fb%3Fc");
    assert_eq!(
        percent_encode(r#"{"t":["c"]}"#),
        "%7B%22t%22%3A%5B%22c%22%5D%7D"
    );
}

// --- against a fake HTTP server on a unix socket ------------------------------------------

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kpulse-docker-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Serves one connection: for each request read, the next canned raw response (or, for the
/// last one, whatever is left, then close). Returns the request lines seen.
async fn serve(responses: Vec<Vec<u8>>) -> (PathBuf, mpsc::UnboundedReceiver<String>) {
    let path = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let cleanup = path.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let _ = std::fs::remove_file(&cleanup);
        let mut buf = Vec::new();
        for response in responses {
            // Read one request head.
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let _ = seen_tx.send(head.lines().next().unwrap_or("").to_owned());
                    break;
                }
                let mut chunk = [0u8; 1024];
                let n = sock.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if sock.write_all(&response).await.is_err() {
                return;
            }
        }
        // Keep the connection open a little (a stream that does not end).
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    (path, seen_rx)
}

fn ok_json(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn client(path: &Path) -> Client {
    Client::new(path, Duration::from_secs(2))
}

#[tokio::test]
async fn containers_lists_then_inspects_on_one_connection() {
    let gone = "f".repeat(64);
    let (path, mut seen) = serve(vec![
        ok_json(&format!(r#"[{{"Id":"{ID}"}},{{"Id":"{gone}"}}]"#)),
        ok_json(&inspect_json(ID)),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 27\r\n\r\n{\"message\":\"No such thing\"}"
            .to_vec(),
    ])
    .await;
    let list = client(&path).containers().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "web");
    assert_eq!(seen.recv().await.unwrap(), "GET /containers/json HTTP/1.1");
    assert_eq!(
        seen.recv().await.unwrap(),
        format!("GET /containers/{ID}/json HTTP/1.1")
    );
    assert_eq!(
        seen.recv().await.unwrap(),
        format!("GET /containers/{gone}/json HTTP/1.1")
    );
}

#[tokio::test]
async fn inspect_missing_is_none_and_errors_are_statuses() {
    let (path, _s) = serve(vec![
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
    ])
    .await;
    assert_eq!(client(&path).inspect("nope").await.unwrap(), None);

    let body = r#"{"message":"server is sad"}"#;
    let resp = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (path, _s) = serve(vec![resp.into_bytes()]).await;
    let err = client(&path).inspect(ID).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Status { code: 500, ref message, .. } if message == "server is sad"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_and_cut_responses() {
    // Not HTTP.
    let (path, _s) = serve(vec![b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()]).await;
    let err = client(&path).inspect(ID).await.unwrap_err();
    assert_eq!(err.kind(), "protocol", "{err}");

    // A body cut short (Content-Length promises more, then the connection closes).
    let (path, _s) = serve(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"Id\"".to_vec(),
    ])
    .await;
    let err = client(&path).inspect(ID).await.unwrap_err();
    assert!(matches!(err.kind(), "unavailable" | "protocol"), "{err}");

    // Valid HTTP, invalid JSON.
    let (path, _s) = serve(vec![ok_json("[{\"Id\":")]).await;
    let err = client(&path).containers().await.unwrap_err();
    assert!(err.to_string().contains("bad JSON"), "{err}");

    // No socket.
    let err = client(Path::new("/nonexistent/docker.sock"))
        .containers()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable");
}

#[tokio::test]
async fn timeout_when_the_daemon_does_not_answer() {
    let path = socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (_sock, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let err = Client::new(&path, Duration::from_millis(200))
        .containers()
        .await
        .unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert_eq!(err.kind(), "timeout");
}

#[tokio::test]
async fn events_stream_chunked() {
    let ev = |action: &str| {
        format!(r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{ID}"}}}}"#) + "\n"
    };
    let body = format!("{}{}{}", ev("start"), ev("exec_start: sh"), ev("die"));
    // Chunked, with a chunk boundary inside an event.
    let (a, b) = body.split_at(30);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let (path, mut seen) = serve(vec![resp.into_bytes()]).await;
    let (tx, mut rx) = mpsc::channel(8);
    client(&path).events(tx).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().action, "start");
    assert_eq!(rx.recv().await.unwrap().action, "die");
    assert_eq!(rx.recv().await, None);
    let line = seen.recv().await.unwrap();
    assert!(line.starts_with("GET /events?filters=%7B"), "{line}");

    // A stream cut inside an event is an error, after the complete ones.
    let resp = format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}{{\"Type\":",
        ev("destroy")
    );
    let (path, _s) = serve(vec![resp.into_bytes()]).await;
    let (tx, mut rx) = mpsc::channel(8);
    let err = client(&path).events(tx).await.unwrap_err();
    assert_eq!(err.kind(), "protocol", "{err}");
    assert_eq!(rx.recv().await.unwrap().action, "destroy");
}

// --- against a real dockerd ---------------------------------------------------------------

#[tokio::test]
async fn real_docker() {
    let Some(socket) = crate::containers::containerd::tests::real_socket("KPULSE_TEST_DOCKER_SOCK")
    else {
        return;
    };
    let client = Client::new(&socket, Duration::from_secs(5));
    let (tx, _rx) = mpsc::channel(64);
    let events = {
        let client = client.clone();
        tokio::spawn(async move { client.events(tx).await })
    };
    let containers = client.containers().await.unwrap();
    eprintln!("docker: {} running containers", containers.len());
    for c in &containers {
        eprintln!("  {c:?}");
        assert_eq!(c.id.len(), 64, "{c:?}");
        assert!(c.id.bytes().all(|b| b.is_ascii_hexdigit()), "{c:?}");
        assert!(!c.name.is_empty() && !c.name.starts_with('/'), "{c:?}");
        assert!(c.running && c.pid > 0, "{c:?}");
        assert!(Path::new(&format!("/proc/{}", c.pid)).exists(), "{c:?}");
        assert_eq!(client.inspect(&c.id).await.unwrap().as_ref(), Some(c));
    }
    assert_eq!(
        client.inspect("kpulse-no-such-container").await.unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!events.is_finished(), "events ended: {:?}", events.await);
    events.abort();
}
