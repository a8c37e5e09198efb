//! The SDK's error type: what a plugin returns from `init`, `start`, timers and `update`.

use crate::bindings::kpulse::plugin::types::ErrorCode;

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// This host lacks what the plugin needs; from `init` it marks the plugin `inactive`.
    NotSupported(String),
    /// The plugin's configuration is invalid; from `init` it stops the plugin until fixed.
    InvalidConfig(String),
    /// A host call failed, with what was being done (`read /proc/x`).
    Host { code: ErrorCode, context: String },
    /// Anything else.
    Other(String),
}

impl Error {
    /// An [`Error::Other`] from any message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error::Other(message.to_string())
    }

    /// Whether the host refused for lack of a capability.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self,
            Error::Host {
                code: ErrorCode::AccessDenied,
                ..
            }
        )
    }

    /// Whether the host or kernel cannot do it (e.g. kprobes on a kernel without them):
    /// the cue to fall back, e.g. to a tracepoint.
    pub fn is_not_supported(&self) -> bool {
        matches!(
            self,
            Error::NotSupported(_)
                | Error::Host {
                    code: ErrorCode::NotSupported,
                    ..
                }
        )
    }

    /// Whether the file or process was not there.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Host {
                code: ErrorCode::NotFound,
                ..
            }
        )
    }

    pub(crate) fn host(code: ErrorCode, context: impl Into<String>) -> Self {
        Error::Host {
            code,
            context: context.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotSupported(m) => write!(f, "not supported: {m}"),
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Host { code, context } => write!(f, "{context}: {}", code_name(*code)),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::Other(format!("json: {err}"))
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::AccessDenied => "access denied",
        ErrorCode::NotFound => "not found",
        ErrorCode::InvalidArgument => "invalid argument",
        ErrorCode::TooLarge => "too large",
        ErrorCode::Io => "i/o error",
        ErrorCode::QueueFull => "queue full",
        ErrorCode::NotSupported => "not supported",
    }
}
