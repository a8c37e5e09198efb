//! The error both runtime clients (containerd and Docker) return.

use std::time::Duration;

/// A failed runtime API call. Every variant carries `context`: the socket path and the
/// method or request path, e.g. `/run/containerd/containerd.sock Containers/List`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket is absent, refuses connections, or the connection broke.
    #[error("{context}: runtime unavailable: {source}")]
    Unavailable {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The call did not finish within the client's timeout.
    #[error("{context}: timed out after {after:?}")]
    Timeout { context: String, after: Duration },
    /// The peer spoke something this client does not understand (bad framing, an
    /// undecodable message, an unexpected HTTP status line or content type).
    #[error("{context}: protocol error: {detail}")]
    Protocol { context: String, detail: String },
    /// The runtime answered with an error: a gRPC status code (containerd) or an HTTP
    /// status code (Docker).
    #[error("{context}: status {code}: {message}")]
    Status {
        context: String,
        code: i32,
        message: String,
    },
}

impl ApiError {
    /// A short, stable name for metric labels.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout { .. } => "timeout",
            Self::Protocol { .. } => "protocol",
            Self::Status { .. } => "status",
        }
    }

    pub(crate) fn protocol(context: &str, detail: impl Into<String>) -> Self {
        Self::Protocol {
            context: context.to_owned(),
            detail: detail.into(),
        }
    }

    pub(crate) fn unavailable(context: &str, source: std::io::Error) -> Self {
        Self::Unavailable {
            context: context.to_owned(),
            source,
        }
    }

    pub(crate) fn timeout(context: &str, after: Duration) -> Self {
        Self::Timeout {
            context: context.to_owned(),
            after,
        }
    }
}
