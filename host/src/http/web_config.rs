//! node_exporter's web-config file (Prometheus exporter-toolkit's format), so that the TLS
//! and basic-auth setup users already have for node_exporter and HUATUO works unchanged:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths are relative to this file
//!   key_file: server.key
//!   min_version: TLS12           # TLS12 (default) or TLS13
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt hash
//! ```
//!
//! Keys of the format that kpulse does not implement are refused by name rather than ignored:
//! a setting that silently does nothing would be a security hole (`cipher_suites`, client
//! certificates accepted without verification, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::version::{TLS12, TLS13};
use rustls::{ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;

use super::basic_auth::BasicAuth;

/// Why the web config cannot be used; the agent does not start.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or an unknown key or a value of the wrong type (serde_yaml names the key).
    #[error("invalid web config file {}: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    /// A value that parses but cannot be used.
    #[error("invalid web config file {}: {key}: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// What the HTTP server enforces from the web config.
#[derive(Default)]
pub struct WebSecurity {
    /// Serve HTTPS with this configuration instead of plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// Require one of these users on every request.
    pub basic_auth: Option<Arc<BasicAuth>>,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.basic_auth.is_some())
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    /// `http2` and `headers`: not implemented (the API speaks HTTP/1.1).
    http_server_config: Option<serde_yaml::Value>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    // Part of the format, refused by name (see `refuse_unsupported`).
    cert: Option<serde_yaml::Value>,
    key: Option<serde_yaml::Value>,
    client_ca: Option<serde_yaml::Value>,
    client_allowed_sans: Option<serde_yaml::Value>,
    cipher_suites: Option<serde_yaml::Value>,
    curve_preferences: Option<serde_yaml::Value>,
    prefer_server_cipher_suites: Option<serde_yaml::Value>,
}

/// Reads and checks a web config file: certificates and keys are loaded and every bcrypt
/// hash is parsed now, so a mistake stops the agent at start-up rather than at the first
/// request.
pub fn load(path: &Path) -> Result<WebSecurity, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let syntax = |err: serde_yaml::Error| WebConfigError::Syntax {
        path: path.to_owned(),
        message: err.to_string(),
    };
    // An empty file (or one of comments only) is a valid config that enables nothing.
    let file: File = match serde_yaml::from_str::<serde_yaml::Value>(&text).map_err(syntax)? {
        serde_yaml::Value::Null => File::default(),
        _ => serde_yaml::from_str(&text).map_err(syntax)?,
    };
    let invalid = |key: &str, message: String| WebConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    if file.http_server_config.is_some() {
        return Err(invalid(
            "http_server_config",
            "not supported by kpulse (the API speaks HTTP/1.1 and sets its own headers); remove it"
                .to_owned(),
        ));
    }
    // Relative paths are relative to the web config file, as in exporter-toolkit.
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = file
        .tls_server_config
        .map(|tls| tls_config(tls, dir).map_err(|(key, message)| invalid(&key, message)))
        .transpose()?
        .map(Arc::new);
    let basic_auth = match file.basic_auth_users {
        Some(users) if !users.is_empty() => Some(Arc::new(
            BasicAuth::new(users)
                .map_err(|(user, message)| invalid(&format!("basic_auth_users.{user}"), message))?,
        )),
        _ => None,
    };
    Ok(WebSecurity { tls, basic_auth })
}

type KeyError = (String, String);

fn key_error(key: &str, message: impl Into<String>) -> KeyError {
    (format!("tls_server_config.{key}"), message.into())
}

fn refuse_unsupported(tls: &TlsFile) -> Result<(), KeyError> {
    let unsupported = [
        (
            tls.cert.is_some(),
            "cert",
            "inline certificates are not supported; use cert_file",
        ),
        (
            tls.key.is_some(),
            "key",
            "inline keys are not supported; use key_file",
        ),
        (
            tls.client_ca.is_some(),
            "client_ca",
            "inline CAs are not supported; use client_ca_file",
        ),
        (
            tls.client_allowed_sans.is_some(),
            "client_allowed_sans",
            "not supported by kpulse: any client certificate signed by client_ca_file is accepted",
        ),
        (
            tls.cipher_suites.is_some(),
            "cipher_suites",
            "not supported by kpulse: rustls offers only modern AEAD suites; choose min_version instead",
        ),
        (
            tls.curve_preferences.is_some(),
            "curve_preferences",
            "not supported by kpulse: rustls picks X25519, then P-256 and P-384",
        ),
        (
            tls.prefer_server_cipher_suites.is_some(),
            "prefer_server_cipher_suites",
            "not supported by kpulse: rustls always prefers the server's order",
        ),
    ];
    match unsupported.into_iter().find(|(present, ..)| *present) {
        Some((_, key, message)) => Err(key_error(key, message)),
        None => Ok(()),
    }
}

fn version(key: &str, value: &str) -> Result<&'static SupportedProtocolVersion, KeyError> {
    match value {
        "TLS12" => Ok(&TLS12),
        "TLS13" => Ok(&TLS13),
        "TLS10" | "TLS11" => Err(key_error(
            key,
            format!("{value} is not supported: rustls speaks TLS12 and TLS13 only"),
        )),
        other => Err(key_error(
            key,
            format!("must be TLS12 or TLS13, got {other:?}"),
        )),
    }
}

fn tls_config(tls: TlsFile, dir: &Path) -> Result<ServerConfig, KeyError> {
    refuse_unsupported(&tls)?;
    let resolve = |file: &Path| dir.join(file);
    let cert_file = tls.cert_file.as_deref().map(resolve).ok_or_else(|| {
        key_error(
            "cert_file",
            "missing: tls_server_config needs cert_file and key_file",
        )
    })?;
    let key_file = tls.key_file.as_deref().map(resolve).ok_or_else(|| {
        key_error(
            "key_file",
            "missing: tls_server_config needs cert_file and key_file",
        )
    })?;

    let min = version("min_version", tls.min_version.as_deref().unwrap_or("TLS12"))?;
    let max = version("max_version", tls.max_version.as_deref().unwrap_or("TLS13"))?;
    let versions: Vec<&'static SupportedProtocolVersion> = [&TLS12, &TLS13]
        .into_iter()
        .filter(|v| {
            let rank = u16::from(v.version);
            rank >= u16::from(min.version) && rank <= u16::from(max.version)
        })
        .collect();
    if versions.is_empty() {
        return Err(key_error("max_version", "is below min_version"));
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|err| key_error("min_version", err.to_string()))?;
    let auth_type = tls.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth_type {
        "NoClientCert" => {
            if tls.client_ca_file.is_some() {
                return Err(key_error(
                    "client_ca_file",
                    "set, but client_auth_type is NoClientCert: set client_auth_type to RequireAndVerifyClientCert or VerifyClientCertIfGiven",
                ));
            }
            builder.with_no_client_auth()
        }
        "RequireAndVerifyClientCert" | "VerifyClientCertIfGiven" => {
            let ca_file = tls.client_ca_file.as_deref().map(resolve).ok_or_else(|| {
                key_error(
                    "client_ca_file",
                    format!("missing: client_auth_type {auth_type} needs the CA that signs client certificates"),
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(&ca_file).map_err(|m| key_error("client_ca_file", m))? {
                roots.add(cert).map_err(|err| {
                    key_error(
                        "client_ca_file",
                        format!("{}: not a usable CA certificate: {err}", ca_file.display()),
                    )
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth_type == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|err| key_error("client_ca_file", err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(key_error(
                "client_auth_type",
                format!(
                    "{auth_type} accepts client certificates without verifying them, which kpulse does not do; use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
                ),
            ));
        }
        other => {
            return Err(key_error(
                "client_auth_type",
                format!(
                    "must be NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert, got {other:?}"
                ),
            ));
        }
    };

    let certs = read_certificates(&cert_file).map_err(|m| key_error("cert_file", m))?;
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|err| {
        key_error(
            "key_file",
            format!("{}: no usable private key: {err}", key_file.display()),
        )
    })?;
    let mut config = builder.with_single_cert(certs, key).map_err(|err| {
        key_error(
            "key_file",
            format!(
                "{} does not fit cert_file {}: {err}",
                key_file.display(),
                cert_file.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("{}: {err}", file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            file.display()
        ));
    }
    Ok(certs)
}
