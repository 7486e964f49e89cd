//! The v2 `code` values (shared by every v2 product) and what a client should do about them.

/// Success.
pub const OK: i64 = 0;
/// Invalid parameter. For PullEvent it also means "no event"; for ConfirmEvent, an unknown
/// or expired handle.
pub const INVALID_PARAMETER: i64 = 4000;
/// Authentication failed (bad SecretId, SecretKey or signature).
pub const AUTH_FAILURE: i64 = 4100;
/// The request expired (Timestamp).
pub const REQUEST_EXPIRED: i64 = 4200;
/// Access denied (account suspended or not allowed to call the API).
pub const ACCESS_DENIED: i64 = 4300;
/// Over the call quota.
pub const QUOTA_EXCEEDED: i64 = 4400;
/// Replay: Nonce reused, or Timestamp more than 2 h away from the server's clock.
pub const REPLAY: i64 = 4500;
/// Protocol not supported.
pub const PROTOCOL_NOT_SUPPORTED: i64 = 4600;
/// Internal server error.
pub const INTERNAL_ERROR: i64 = 6000;
/// Version not supported / API under maintenance.
pub const MAINTENANCE: i64 = 6100;
/// API temporarily unavailable.
pub const UNAVAILABLE: i64 = 6200;

/// The `codeDesc` a v2 server sends with `code`.
pub fn code_desc(code: i64) -> &'static str {
    match code {
        OK => "Success",
        INVALID_PARAMETER => "InvalidParameter",
        AUTH_FAILURE => "AuthFailure",
        REQUEST_EXPIRED => "RequestExpired",
        ACCESS_DENIED => "AccessDenied",
        QUOTA_EXCEEDED => "RequestLimitExceeded",
        REPLAY => "InvalidNonce",
        INTERNAL_ERROR => "InternalError",
        _ => "Error",
    }
}
