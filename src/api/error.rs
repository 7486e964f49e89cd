//! API failures and what the caller should do about each.

use std::time::Duration;

use vod_protocol::codes;

/// A failed API call. Messages never contain the secret key, the token or a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with a non-zero `code`.
    #[error("{action} was refused with code {code} ({desc}): {message}")]
    Refused {
        /// The action called.
        action: &'static str,
        /// The v2 `code`.
        code: i64,
        /// `codeDesc`, if sent.
        desc: String,
        /// `message`.
        message: String,
    },
    /// The HTTP status was not 200.
    #[error("{action} answered HTTP {status}: {excerpt}")]
    Http {
        /// The action called.
        action: &'static str,
        /// The status.
        status: u16,
        /// The start of the body.
        excerpt: String,
    },
    /// No answer within the client timeout.
    #[error("{action} got no answer within {timeout:?}")]
    Timeout {
        /// The action called.
        action: &'static str,
        /// The client timeout.
        timeout: Duration,
    },
    /// Connection failures, resets, TLS errors.
    #[error("{action} failed: {source}")]
    Transport {
        /// The action called.
        action: &'static str,
        /// The cause (its URL stripped).
        #[source]
        source: reqwest::Error,
    },
    /// The body was not the JSON expected.
    #[error("{action} answered with a malformed body ({detail}): {excerpt}")]
    Malformed {
        /// The action called.
        action: &'static str,
        /// The parse error.
        detail: String,
        /// The start of the body.
        excerpt: String,
    },
}

/// What to do about an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 4100/4300/4600: the credentials or account are refused; an operator must act.
    Auth,
    /// 4200/4500: the Timestamp or Nonce was refused; sign again and retry.
    Resign,
    /// 4400: over the quota; back off.
    Quota,
    /// 4000: a parameter was refused (for ConfirmEvent: an unknown or expired handle).
    InvalidParameter,
    /// Anything else: server faults, timeouts, resets, malformed bodies; back off and retry.
    Transient,
}

impl ApiError {
    /// How to react.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Refused { code, .. } => match *code {
                codes::AUTH_FAILURE | codes::ACCESS_DENIED | codes::PROTOCOL_NOT_SUPPORTED => ErrorClass::Auth,
                codes::REQUEST_EXPIRED | codes::REPLAY => ErrorClass::Resign,
                codes::QUOTA_EXCEEDED => ErrorClass::Quota,
                codes::INVALID_PARAMETER => ErrorClass::InvalidParameter,
                _ => ErrorClass::Transient,
            },
            _ => ErrorClass::Transient,
        }
    }

    /// A short label for logs and metrics (`4100`, `http_500`, `timeout`, ...).
    pub fn label(&self) -> String {
        match self {
            ApiError::Refused { code, .. } => code.to_string(),
            ApiError::Http { status, .. } => format!("http_{status}"),
            ApiError::Timeout { .. } => "timeout".into(),
            ApiError::Transport { .. } => "transport".into(),
            ApiError::Malformed { .. } => "malformed".into(),
        }
    }
}

/// At most `max` characters of `body`, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}
