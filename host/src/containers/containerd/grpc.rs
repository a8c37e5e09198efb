//! A minimal gRPC client over HTTP/2 (h2) on a unix socket: message framing, status
//! trailers, and one call per connection.
//!
//! gRPC framing: each message is a 1-byte compressed flag (always 0 here: the client
//! announces no `grpc-accept-encoding`), a big-endian u32 length and the protobuf bytes. The
//! call's outcome is the `grpc-status`/`grpc-message` trailers, or the response headers for a
//! trailers-only response (an error before any message).

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request};
use tokio::net::UnixStream;

use super::error::ApiError;

/// The largest message accepted, as containerd's own default receive limit.
pub(crate) const MAX_MESSAGE: usize = 16 << 20;

/// gRPC status code `UNIMPLEMENTED`.
pub(crate) const UNIMPLEMENTED: i32 = 12;

/// One length-prefixed gRPC message.
pub(crate) fn encode(message: &impl prost::Message) -> Result<Bytes, String> {
    let body = message.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(|_| "request message too large".to_owned())?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(Bytes::from(frame))
}

/// Splits a byte stream (HTTP/2 DATA frames, arbitrarily cut) into gRPC messages.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `None` when more bytes are needed.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, String> {
        let Some(header) = self.buf.get(..5) else {
            return Ok(None);
        };
        let flag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        match flag {
            0 => {}
            1 => return Err("compressed message, but no compression was negotiated".into()),
            other => return Err(format!("bad message flag {other:#04x}")),
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max {
            return Err(format!(
                "message of {len} bytes exceeds the {} byte limit",
                self.max
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// At the end of the stream: an error if a partial message is left.
    pub(crate) fn finish(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "stream ended inside a message ({} bytes left)",
                self.buf.len()
            ))
        }
    }
}

/// The `grpc-status` and `grpc-message` of a header block; `None` when it has no status.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<Result<(i32, String), String>> {
    let status = headers.get("grpc-status")?;
    let code = match status
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        Some(code) => code,
        None => return Some(Err(format!("bad grpc-status {status:?}"))),
    };
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Ok((code, message)))
}

/// `grpc-message` is percent-encoded UTF-8; invalid escapes are kept as they are.
pub(crate) fn percent_decode(raw: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An h2 error as an [`ApiError`]: a broken connection or a GOAWAY means the runtime went
/// away; anything else is a protocol error.
fn h2_error(context: &str, err: h2::Error) -> ApiError {
    if err.is_io() {
        let io = err
            .into_io()
            .unwrap_or_else(|| std::io::Error::other("connection error"));
        return ApiError::unavailable(context, io);
    }
    if err.is_go_away() && err.reason() == Some(h2::Reason::NO_ERROR) {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, err);
        return ApiError::unavailable(context, io);
    }
    ApiError::protocol(context, format!("http2: {err}"))
}

/// Aborts the task driving the HTTP/2 connection when the call is dropped.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum State {
    Pending(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    Done,
}

/// One gRPC call in flight: its response messages are read with [`Call::message`].
pub(crate) struct Call {
    context: String,
    state: State,
    decoder: FrameDecoder,
    _conn: ConnTask,
}

/// Where and what to call.
pub(crate) struct Target<'a> {
    pub socket: &'a Path,
    /// For messages: `<socket> <Service>/<Method>`.
    pub context: &'a str,
    /// `/containerd.services.<svc>.v1.<Service>/<Method>`.
    pub path: &'a str,
    /// The `containerd-namespace` header, when the method is namespaced.
    pub namespace: Option<&'a str>,
    /// Sent as `grpc-timeout` so the server gives up too (unary calls).
    pub deadline: Option<Duration>,
}

impl Call {
    /// Connects, sends the request and returns without waiting for the response headers
    /// (a server stream may send them only with its first message). With `confirm` it waits
    /// for an HTTP/2 PING answer, which the server sends after reading the request.
    pub(crate) async fn start(
        target: &Target<'_>,
        request: Bytes,
        confirm: bool,
    ) -> Result<Self, ApiError> {
        let context = target.context;
        let stream = UnixStream::connect(target.socket)
            .await
            .map_err(|e| ApiError::unavailable(context, e))?;
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 20)
            .max_header_list_size(1 << 20)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| h2_error(context, e))?;
        let ping = if confirm { conn.ping_pong() } else { None };
        let conn = ConnTask(tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, "containerd connection ended");
            }
        }));

        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(format!("http://localhost{}", target.path))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "kpulse");
        if let Some(ns) = target.namespace {
            let value = HeaderValue::from_str(ns)
                .map_err(|_| ApiError::protocol(context, format!("bad namespace {ns:?}")))?;
            builder = builder.header("containerd-namespace", value);
        }
        if let Some(deadline) = target.deadline {
            let ms = deadline.as_millis().clamp(1, 99_999_999);
            builder = builder.header("grpc-timeout", format!("{ms}m"));
        }
        let req = builder
            .body(())
            .map_err(|e| ApiError::protocol(context, format!("request: {e}")))?;

        let mut send = send.ready().await.map_err(|e| h2_error(context, e))?;
        let (response, mut body) = send
            .send_request(req, false)
            .map_err(|e| h2_error(context, e))?;
        body.send_data(request, true)
            .map_err(|e| h2_error(context, e))?;
        if let Some(mut ping) = ping {
            ping.ping(h2::Ping::opaque())
                .await
                .map_err(|e| h2_error(context, e))?;
        }
        Ok(Self {
            context: context.to_owned(),
            state: State::Pending(response),
            decoder: FrameDecoder::new(MAX_MESSAGE),
            _conn: conn,
        })
    }

    /// The next response message; `Ok(None)` once the call ended with status OK.
    pub(crate) async fn message(&mut self) -> Result<Option<Bytes>, ApiError> {
        loop {
            if let Some(message) = self
                .decoder
                .next_message()
                .map_err(|e| ApiError::protocol(&self.context, e))?
            {
                return Ok(Some(message));
            }
            match &mut self.state {
                State::Done => return Ok(None),
                State::Pending(response) => {
                    let response = response.await.map_err(|e| h2_error(&self.context, e))?;
                    self.state = State::Done;
                    let (parts, body) = response.into_parts();
                    self.check_headers(&parts)?;
                    // Trailers-only: the status is in the headers and there is no body.
                    if let Some(status) = grpc_status(&parts.headers) {
                        self.check_status(status)?;
                        return Ok(None);
                    }
                    self.state = State::Body(body);
                }
                State::Body(body) => match body.data().await {
                    Some(Ok(chunk)) => {
                        // Reopen the flow-control window for what was consumed.
                        let _ = body.flow_control().release_capacity(chunk.len());
                        self.decoder.push(&chunk);
                    }
                    Some(Err(e)) => return Err(h2_error(&self.context, e)),
                    None => {
                        let trailers = body
                            .trailers()
                            .await
                            .map_err(|e| h2_error(&self.context, e))?;
                        self.state = State::Done;
                        let status = trailers.as_ref().and_then(grpc_status).ok_or_else(|| {
                            ApiError::protocol(&self.context, "response ended without grpc-status")
                        })?;
                        self.check_status(status)?;
                        self.decoder
                            .finish()
                            .map_err(|e| ApiError::protocol(&self.context, e))?;
                        return Ok(None);
                    }
                },
            }
        }
    }

    fn check_headers(&self, parts: &http::response::Parts) -> Result<(), ApiError> {
        if parts.status != http::StatusCode::OK {
            return Err(ApiError::protocol(
                &self.context,
                format!("http status {}", parts.status),
            ));
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !content_type.starts_with(b"application/grpc") {
            return Err(ApiError::protocol(
                &self.context,
                format!(
                    "content-type {:?}, not application/grpc",
                    String::from_utf8_lossy(content_type)
                ),
            ));
        }
        Ok(())
    }

    fn check_status(&self, status: Result<(i32, String), String>) -> Result<(), ApiError> {
        match status {
            Ok((0, _)) => Ok(()),
            Ok((code, message)) => Err(ApiError::Status {
                context: self.context.clone(),
                code,
                message,
            }),
            Err(e) => Err(ApiError::protocol(&self.context, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_messages_split_across_chunks() {
        let mut bytes = frame(0, b"hello");
        bytes.extend(frame(0, b""));
        bytes.extend(frame(0, b"world!"));
        // Feed one byte at a time: every cut must work.
        let mut d = FrameDecoder::new(64);
        let mut got = Vec::new();
        for b in &bytes {
            d.push(&[*b]);
            while let Some(m) = d.next_message().ok().flatten() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![&b"hello"[..], b"", b"world!"]);
        assert!(d.finish().is_ok());
    }

    #[test]
    fn rejects_compressed_bad_flag_and_oversized() {
        let mut d = FrameDecoder::new(64);
        d.push(&frame(1, b"x"));
        assert!(d.next_message().is_err_and(|e| e.contains("compressed")));

        let mut d = FrameDecoder::new(64);
        d.push(&frame(7, b"x"));
        assert!(d.next_message().is_err_and(|e| e.contains("flag")));

        let mut d = FrameDecoder::new(64);
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_message().is_err_and(|e| e.contains("limit")));
    }

    #[test]
    fn truncated_message_is_an_error_at_the_end() {
        let mut d = FrameDecoder::new(64);
        let f = frame(0, b"abcdef");
        d.push(&f[..8]);
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.finish().is_err());
        // A partial header too.
        let mut d = FrameDecoder::new(64);
        d.push(&[0, 0]);
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.finish().is_err());
    }

    #[test]
    fn encode_roundtrips() {
        let req = super::super::proto::ListTasksRequest { filter: "x".into() };
        let bytes = encode(&req).unwrap_or_default();
        let mut d = FrameDecoder::new(64);
        d.push(&bytes);
        let body = d.next_message().ok().flatten().unwrap_or_default();
        let back: super::super::proto::ListTasksRequest =
            prost::Message::decode(body).unwrap_or_default();
        assert_eq!(back, req);
    }

    #[test]
    fn status_headers() {
        let mut h = HeaderMap::new();
        assert!(grpc_status(&h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("5"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("container %22c9%22: not found%e2%9c%93%zz"),
        );
        assert_eq!(
            grpc_status(&h),
            Some(Ok((5, "container \"c9\": not found\u{2713}%zz".to_owned())))
        );
        h.insert("grpc-status", HeaderValue::from_static("five"));
        assert!(matches!(grpc_status(&h), Some(Err(_))));
    }
}
