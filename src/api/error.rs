//! API failures and what the caller should do about each.

use std::time::Duration;

use vod_protocol::codes;

/// A failed API call. Messages never contain the secret key, the token or a signed URL.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API refused the call (v2: non-zero `code`; v3: `Response.Error`).
    #[error("{action} was refused with code {code}: {message}")]
    Refused {
        /// The action called.
        action: &'static str,
        /// The error code.
        code: Code,
        /// The message (v2: with `codeDesc`).
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

/// An API error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A v2 numeric `code` (4100, 6000, ...).
    V2(i64),
    /// A v3 `Response.Error.Code` (`AuthFailure.SignatureFailure`, ...).
    V3(String),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::V2(c) => write!(f, "{c}"),
            Code::V3(c) => f.write_str(c),
        }
    }
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
            ApiError::Refused { code: Code::V2(code), .. } => match *code {
                codes::AUTH_FAILURE | codes::ACCESS_DENIED | codes::PROTOCOL_NOT_SUPPORTED => ErrorClass::Auth,
                codes::REQUEST_EXPIRED | codes::REPLAY => ErrorClass::Resign,
                codes::QUOTA_EXCEEDED => ErrorClass::Quota,
                codes::INVALID_PARAMETER => ErrorClass::InvalidParameter,
                _ => ErrorClass::Transient,
            },
            ApiError::Refused { code: Code::V3(code), .. } => v3_class(code),
            _ => ErrorClass::Transient,
        }
    }

    /// A short label for logs and metrics (`4100`, `AuthFailure.SignatureFailure`, `http_500`, ...).
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

/// How to react to a v3 error code (documented common codes; unknown ones are retried).
fn v3_class(code: &str) -> ErrorClass {
    let family = code.split('.').next().unwrap_or(code);
    match (family, code) {
        (_, "AuthFailure.SignatureExpire") => ErrorClass::Resign,
        (
            "AuthFailure"
            | "UnauthorizedOperation"
            | "IpNotInWhitelist"
            | "IpInBlacklist"
            | "NoSuchProduct"
            | "NoSuchVersion"
            | "UnsupportedRegion"
            | "InvalidAction"
            | "ActionOffline",
            _,
        ) => ErrorClass::Auth,
        ("RequestLimitExceeded" | "LimitExceeded", _) => ErrorClass::Quota,
        ("InvalidParameter" | "InvalidParameterValue" | "MissingParameter" | "UnknownParameter", _) => {
            ErrorClass::InvalidParameter
        }
        _ => ErrorClass::Transient,
    }
}

/// The action whose answers carry data keys: nothing of its bodies is ever quoted.
pub(crate) const DRM_ACTION: &str = "DescribeDrmDataKey";

impl ApiError {
    /// A non-200 answer.
    pub(crate) fn http(action: &'static str, status: u16, body: &[u8]) -> ApiError {
        ApiError::Http { action, status, excerpt: excerpt(action, body) }
    }

    /// A body that did not parse. serde quotes the values it trips over, so for
    /// DescribeDrmDataKey only the kind of error and its position are kept.
    pub(crate) fn malformed(action: &'static str, e: &serde_json::Error, body: &[u8]) -> ApiError {
        let detail = if action == DRM_ACTION {
            format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column())
        } else {
            e.to_string()
        };
        ApiError::Malformed { action, detail, excerpt: excerpt(action, body) }
    }
}

/// At most 200 characters of `body`, for error messages; nothing of a DescribeDrmDataKey answer.
pub(crate) fn excerpt(action: &str, body: &[u8]) -> String {
    const MAX: usize = 200;
    if action == DRM_ACTION {
        return format!("({} bytes not shown: {DRM_ACTION} answers carry data keys)", body.len());
    }
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: Code) -> ApiError {
        ApiError::Refused { action: "PullEvents", code, message: String::new() }
    }

    #[test]
    fn data_key_answers_are_never_quoted() {
        let body = br#"{"code":"0","data":{"keyList":[{"edk":"E","dk":"DATAKEY"}]},"x":"DATAKEY"}"#;
        let parse_error = serde_json::from_slice::<Vec<String>>(br#"["DATAKEY", 1]"#).unwrap_err();
        for e in [ApiError::http(DRM_ACTION, 502, body), ApiError::malformed(DRM_ACTION, &parse_error, body)] {
            assert!(!e.to_string().contains("DATAKEY"), "{e}");
        }
        assert!(ApiError::malformed("PullEvent", &parse_error, body).to_string().contains("DATAKEY"));
    }

    #[test]
    fn both_apis_classify_alike() {
        for (v2, v3, class) in [
            (4100, "AuthFailure.SignatureFailure", ErrorClass::Auth),
            (4500, "AuthFailure.SignatureExpire", ErrorClass::Resign),
            (4400, "RequestLimitExceeded", ErrorClass::Quota),
            (4000, "InvalidParameterValue.EventHandle", ErrorClass::InvalidParameter),
            (6000, "InternalError", ErrorClass::Transient),
            (6200, "ServiceUnavailable", ErrorClass::Transient),
        ] {
            assert_eq!(refused(Code::V2(v2)).class(), class, "{v2}");
            assert_eq!(refused(Code::V3(v3.into())).class(), class, "{v3}");
        }
    }
}
