#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use prost::Message;

use super::*;

fn any(type_url: &str, m: &impl Message) -> proto::Any {
    proto::Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn envelope(topic: &str, event: Option<proto::Any>) -> proto::Envelope {
    proto::Envelope {
        timestamp: Some(proto::Timestamp {
            seconds: 1,
            nanos: 2,
        }),
        namespace: "kptest".into(),
        topic: topic.into(),
        event,
    }
}

#[test]
fn decodes_task_and_container_events() {
    let start = proto::TaskStart {
        container_id: "c1".into(),
        pid: 42,
    };
    let e = decode_event(envelope(
        "/tasks/start",
        Some(any("containerd.events.TaskStart", &start)),
    ))
    .unwrap();
    assert_eq!(
        e,
        Event::TaskStart {
            namespace: "kptest".into(),
            id: "c1".into(),
            pid: 42
        }
    );

    let exit = proto::TaskExit {
        container_id: "c1".into(),
        id: "c1".into(),
        pid: 42,
        exit_status: 137,
    };
    let e = decode_event(envelope("/tasks/exit", Some(any("x", &exit)))).unwrap();
    assert!(matches!(
        e,
        Event::TaskExit {
            exit_status: 137,
            pid: 42,
            ..
        }
    ));

    // An exec'd process's exit is not the container's.
    let exec_exit = proto::TaskExit {
        id: "exec1".into(),
        ..exit
    };
    let e = decode_event(envelope("/tasks/exit", Some(any("x", &exec_exit)))).unwrap();
    assert!(matches!(e, Event::Other { ref topic, .. } if topic == "/tasks/exit"));

    let del = proto::TaskDelete {
        container_id: "c1".into(),
        pid: 42,
        exit_status: 0,
        id: String::new(),
    };
    let e = decode_event(envelope("/tasks/delete", Some(any("x", &del)))).unwrap();
    assert!(matches!(e, Event::TaskDelete { ref id, .. } if id == "c1"));

    let create = proto::ContainerCreate {
        id: "c2".into(),
        image: "img".into(),
    };
    let e = decode_event(envelope("/containers/create", Some(any("x", &create)))).unwrap();
    assert!(matches!(e, Event::ContainerCreate { ref image, .. } if image == "img"));

    let e = decode_event(envelope(
        "/containers/delete",
        Some(any("x", &proto::ContainerDelete { id: "c2".into() })),
    ))
    .unwrap();
    assert_eq!(e.namespace(), "kptest");

    let e = decode_event(envelope("/tasks/oom", None)).unwrap();
    assert!(matches!(e, Event::Other { .. }));
}

#[test]
fn garbage_event_payload_is_an_error() {
    let bad = proto::Any {
        type_url: "containerd.events.TaskStart".into(),
        value: vec![0x0a, 0xff, 0xff],
    };
    assert!(decode_event(envelope("/tasks/start", Some(bad))).is_err());
    // Garbage where a message is expected.
    assert!(matches!(
        decode::<proto::Envelope>("ctx", Bytes::from_static(&[0xff; 7])),
        Err(ApiError::Protocol { .. })
    ));
}

#[test]
fn container_record_from_proto() {
    let c = proto::Container {
        id: "c1".into(),
        labels: [("app".to_owned(), "demo".to_owned())].into(),
        image: String::new(),
        runtime: Some(proto::ContainerRuntime {
            name: "io.containerd.runc.v2".into(),
        }),
        spec: Some(proto::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2","hostname":"h1"}"#.to_vec(),
        }),
        snapshotter: String::new(),
        created_at: Some(proto::Timestamp {
            seconds: 2,
            nanos: 5,
        }),
    };
    let r = container_record("kptest", c.clone());
    assert_eq!(r.hostname(), Some("h1"));
    assert_eq!(r.created_at_ns, 2_000_000_005);
    assert_eq!(r.runtime, "io.containerd.runc.v2");
    assert_eq!(r.labels["app"], "demo");

    let bad_spec = proto::Container {
        spec: Some(proto::Any {
            type_url: String::new(),
            value: b"\x00not json".to_vec(),
        }),
        created_at: Some(proto::Timestamp {
            seconds: -5,
            nanos: 0,
        }),
        ..c
    };
    let r = container_record("kptest", bad_spec);
    assert_eq!(r.spec, None);
    assert_eq!(r.created_at_ns, 0);
}

// --- against a fake gRPC server on a unix socket ------------------------------------------

/// What the fake server answers.
#[derive(Clone)]
enum Reply {
    /// Headers with `grpc-status` and end of stream.
    TrailersOnly(&'static str, &'static str),
    /// Raw body chunks, then trailers with this status (or none: just end the stream).
    Body(Vec<Vec<u8>>, Option<&'static str>),
    /// A non-gRPC content type.
    NotGrpc,
    /// Never answer.
    Hang,
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kpulse-grpc-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// What the fake server saw of a request: path, namespace header, te header, body.
type Seen = (String, Option<String>, Option<String>, Vec<u8>);

/// Serves one connection per reply, in order; returns the socket path and the requests seen.
async fn serve_all(replies: Vec<Reply>) -> (PathBuf, mpsc::UnboundedReceiver<Seen>) {
    let path = socket_path();
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let cleanup = path.clone();
    tokio::spawn(async move {
        for reply in replies {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_conn(sock, reply, seen_tx.clone()));
        }
        let _ = std::fs::remove_file(&cleanup);
    });
    (path, seen_rx)
}

async fn serve(reply: Reply) -> (PathBuf, mpsc::UnboundedReceiver<Seen>) {
    serve_all(vec![reply]).await
}

async fn serve_conn(sock: tokio::net::UnixStream, reply: Reply, seen: mpsc::UnboundedSender<Seen>) {
    let mut conn = h2::server::handshake(sock).await.unwrap();
    let Some(Ok((req, mut respond))) = conn.accept().await else {
        return;
    };
    tokio::spawn(async move {
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            data.extend_from_slice(&chunk);
        }
        let header = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        let _ = seen.send((
            parts.uri.path().to_owned(),
            header("containerd-namespace"),
            header("te"),
            data,
        ));
        let response = |ct: &str| {
            http::Response::builder()
                .status(200)
                .header("content-type", ct)
        };
        match reply {
            Reply::TrailersOnly(code, message) => {
                let resp = response("application/grpc")
                    .header("grpc-status", code)
                    .header("grpc-message", message)
                    .body(())
                    .unwrap();
                respond.send_response(resp, true).unwrap();
            }
            Reply::NotGrpc => {
                let resp = response("text/html").body(()).unwrap();
                respond.send_response(resp, true).unwrap();
            }
            Reply::Body(chunks, status) => {
                let resp = response("application/grpc").body(()).unwrap();
                let mut stream = respond.send_response(resp, false).unwrap();
                for chunk in chunks {
                    stream.send_data(Bytes::from(chunk), false).unwrap();
                }
                match status {
                    Some(code) => {
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", code.parse().unwrap());
                        stream.send_trailers(t).unwrap();
                    }
                    None => stream.send_data(Bytes::new(), true).unwrap(),
                }
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(respond);
            }
        }
    });
    while let Some(Ok(_)) = conn.accept().await {}
}

fn client(path: &Path) -> Client {
    Client::new(path, Duration::from_secs(2))
}

#[tokio::test]
async fn tasks_call_roundtrip() {
    let resp = proto::ListTasksResponse {
        tasks: vec![proto::Process {
            container_id: String::new(),
            id: "c1".into(),
            pid: 7,
            status: 2,
            exit_status: 0,
        }],
    };
    let bytes = frame(&resp.encode_to_vec());
    // Cut the message across DATA frames.
    let (a, b) = bytes.split_at(3);
    let (path, mut seen) = serve(Reply::Body(vec![a.to_vec(), b.to_vec()], Some("0"))).await;
    let tasks = client(&path).tasks("kptest").await.unwrap();
    assert_eq!(
        tasks,
        vec![TaskRecord {
            id: "c1".into(),
            pid: 7,
            status: TaskStatus::Running,
            exit_status: 0
        }]
    );
    let (p, ns, te, body) = seen.recv().await.unwrap();
    assert_eq!(p, TASKS_LIST);
    assert_eq!(ns.as_deref(), Some("kptest"));
    assert_eq!(te.as_deref(), Some("trailers"));
    assert_eq!(body, frame(&[]));
}

#[tokio::test]
async fn trailers_only_error_is_a_status() {
    let (path, _seen) = serve(Reply::TrailersOnly("5", "namespace %22x%22 not found")).await;
    let err = client(&path).tasks("x").await.unwrap_err();
    match &err {
        ApiError::Status {
            code,
            message,
            context,
        } => {
            assert_eq!(*code, 5);
            assert_eq!(message, "namespace \"x\" not found");
            assert!(context.contains("Tasks/List"), "{context}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), "status");
}

#[tokio::test]
async fn list_stream_unimplemented_falls_back_to_list() {
    let resp = proto::ListContainersResponse {
        containers: vec![proto::Container {
            id: "c1".into(),
            ..Default::default()
        }],
    };
    let (path, mut seen) = serve_all(vec![
        Reply::TrailersOnly("12", "unknown method ListStream"),
        Reply::Body(vec![frame(&resp.encode_to_vec())], Some("0")),
    ])
    .await;
    let containers = client(&path).containers("kptest").await.unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].id, "c1");
    assert_eq!(containers[0].namespace, "kptest");
    assert_eq!(seen.recv().await.unwrap().0, CONTAINERS_LIST_STREAM);
    assert_eq!(seen.recv().await.unwrap().0, CONTAINERS_LIST);
}

#[tokio::test]
async fn malformed_and_truncated_responses_are_protocol_errors() {
    // A compressed flag.
    let (path, _s) = serve(Reply::Body(vec![vec![1, 0, 0, 0, 1, 0]], Some("0"))).await;
    let err = client(&path).tasks("kptest").await.unwrap_err();
    assert_eq!(err.kind(), "protocol", "{err}");

    // A truncated message, then OK.
    let mut f = frame(&[0x0a, 0x02, 0x08, 0x01]);
    f.truncate(6);
    let (path, _s) = serve(Reply::Body(vec![f], Some("0"))).await;
    let err = client(&path).tasks("kptest").await.unwrap_err();
    assert!(err.to_string().contains("inside a message"), "{err}");

    // Garbage protobuf in a well-formed frame.
    let (path, _s) = serve(Reply::Body(vec![frame(&[0xff; 9])], Some("0"))).await;
    let err = client(&path).tasks("kptest").await.unwrap_err();
    assert!(err.to_string().contains("bad message"), "{err}");

    // No trailers at all.
    let (path, _s) = serve(Reply::Body(vec![frame(&[])], None)).await;
    let err = client(&path).tasks("kptest").await.unwrap_err();
    assert!(err.to_string().contains("without grpc-status"), "{err}");

    // No message for a unary call.
    let (path, _s) = serve(Reply::Body(vec![], Some("0"))).await;
    let err = client(&path).namespaces().await.unwrap_err();
    assert!(err.to_string().contains("0 messages"), "{err}");

    // Not gRPC.
    let (path, _s) = serve(Reply::NotGrpc).await;
    let err = client(&path).namespaces().await.unwrap_err();
    assert!(err.to_string().contains("content-type"), "{err}");
}

#[tokio::test]
async fn timeout_and_unavailable() {
    let (path, _s) = serve(Reply::Hang).await;
    let c = Client::new(&path, Duration::from_millis(200));
    let err = c.namespaces().await.unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");

    let err = client(Path::new("/nonexistent/kpulse.sock"))
        .namespaces()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unavailable");
    assert!(
        err.to_string()
            .contains("/nonexistent/kpulse.sock Namespaces/List"),
        "{err}"
    );

    // A socket that speaks garbage (not HTTP/2).
    let path = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let err = client(&path).namespaces().await.unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(matches!(err.kind(), "protocol" | "unavailable"), "{err}");
}

#[tokio::test]
async fn subscribe_streams_events_then_ends() {
    let mut chunks = Vec::new();
    for (topic, m) in [
        (
            "/tasks/start",
            proto::TaskStart {
                container_id: "c1".into(),
                pid: 9,
            }
            .encode_to_vec(),
        ),
        ("/tasks/oom", Vec::new()),
    ] {
        let env = envelope(
            topic,
            Some(proto::Any {
                type_url: "t".into(),
                value: m,
            }),
        );
        chunks.push(frame(&env.encode_to_vec()));
    }
    let (path, mut seen) = serve(Reply::Body(chunks, Some("0"))).await;
    let (tx, mut rx) = mpsc::channel(8);
    client(&path).subscribe(tx).await.unwrap();
    assert!(matches!(
        rx.recv().await,
        Some(Event::TaskStart { pid: 9, .. })
    ));
    assert!(matches!(rx.recv().await, Some(Event::Other { .. })));
    assert_eq!(rx.recv().await, None);
    let (p, _, _, body) = seen.recv().await.unwrap();
    assert_eq!(p, EVENTS_SUBSCRIBE);
    let req = proto::SubscribeRequest::decode(&body[5..]).unwrap();
    assert_eq!(req.filters.len(), 2);

    // A stream that fails after an event: the event arrives, then the error.
    let chunk = frame(&envelope("/tasks/oom", None).encode_to_vec());
    let (path, _seen) = serve(Reply::Body(vec![chunk], Some("14"))).await;
    let (tx, mut rx) = mpsc::channel(8);
    let err = client(&path).subscribe(tx).await.unwrap_err();
    assert!(matches!(err, ApiError::Status { code: 14, .. }));
    assert!(rx.recv().await.is_some());
}

// --- against a real containerd ------------------------------------------------------------

/// The socket named by `var`, or `None` (the test is skipped) when it is unset outside CI.
pub(crate) fn real_socket(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is unset: CI must start the test runtimes (scripts/containers.sh start)")
        }
        _ => {
            eprintln!("skipped: {var} is unset (scripts/containers.sh start; source its env file)");
            None
        }
    }
}

#[tokio::test]
async fn real_containerd() {
    let Some(socket) = real_socket("KPULSE_TEST_CONTAINERD_SOCK") else {
        return;
    };
    let client = Client::new(&socket, Duration::from_secs(5));
    let namespaces = client.namespaces().await.unwrap();
    eprintln!("namespaces: {namespaces:?}");

    // Subscribing works (the server acknowledges) and stays open.
    let (tx, _rx) = mpsc::channel(64);
    let sub = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe(tx).await })
    };

    for ns in &namespaces {
        let containers = client.containers(ns).await.unwrap();
        let tasks = client.tasks(ns).await.unwrap();
        eprintln!(
            "{ns}: {} containers, {} tasks",
            containers.len(),
            tasks.len()
        );
        for t in &tasks {
            let c = containers.iter().find(|c| c.id == t.id);
            assert!(c.is_some(), "task {} has no container record in {ns}", t.id);
            if t.status == TaskStatus::Running {
                assert!(t.pid > 0, "{t:?}");
                assert!(
                    Path::new(&format!("/proc/{}", t.pid)).exists(),
                    "task {t:?}: no such process"
                );
            }
        }
        for c in &containers {
            let task = tasks.iter().find(|t| t.id == c.id);
            eprintln!(
                "  {} image={:?} runtime={} labels={:?} hostname={:?} created_at_ns={} task={:?}",
                c.id,
                c.image,
                c.runtime,
                c.labels,
                c.hostname(),
                c.created_at_ns,
                task.map(|t| (t.pid, t.status.as_str()))
            );
            assert_eq!(&c.namespace, ns);
            assert!(!c.runtime.is_empty(), "{c:?}");
            assert!(c.spec.is_some(), "container {} has no JSON spec", c.id);
        }
    }
    // A missing namespace is empty, not an error (containerd lists nothing).
    let none = client.tasks("kpulse-no-such-namespace").await.unwrap();
    assert!(none.is_empty());
    // An invalid namespace name: containerd's trailers-only InvalidArgument.
    let err = client.tasks("not a namespace!").await.unwrap_err();
    assert!(matches!(err, ApiError::Status { code: 3, .. }), "{err}");
    eprintln!("invalid namespace: {err}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sub.is_finished(), "subscription ended: {:?}", sub.await);
    sub.abort();
}

/// Development aid: `KPULSE_DEV_WATCH_SECS=20` prints the events of both runtimes for that
/// long (run with `--nocapture` while starting and stopping containers).
#[tokio::test]
async fn dev_watch() {
    let Some(secs) = std::env::var("KPULSE_DEV_WATCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(64);
    if let Some(sock) = std::env::var_os("KPULSE_TEST_CONTAINERD_SOCK") {
        let c = Client::new(sock, Duration::from_secs(5));
        tokio::spawn(async move {
            eprintln!("containerd subscribe ended: {:?}", c.subscribe(tx).await)
        });
    }
    let (dtx, mut drx) = mpsc::channel(64);
    if let Some(sock) = std::env::var_os("KPULSE_TEST_DOCKER_SOCK") {
        let c = crate::containers::docker::Client::new(sock, Duration::from_secs(5));
        tokio::spawn(async move { eprintln!("docker events ended: {:?}", c.events(dtx).await) });
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        tokio::select! {
            Some(e) = rx.recv() => eprintln!("containerd: {e:?}"),
            Some(e) = drx.recv() => eprintln!("docker: {e:?}"),
            () = tokio::time::sleep_until(end) => break,
        }
    }
}
