//! Facts about Tencent Cloud VOD's server API that both sides of the wire share:
//! the v2 ("signature v1") request signature, the API 3.0 TC3-HMAC-SHA256 signature,
//! and the v2 error codes.
//!
//! The daemon signs with this code and the emulator verifies with it, so the official
//! test vectors live here as unit tests, and the project's cross-check tests compare it
//! with the official Python SDK.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codes;
pub mod tc3;
pub mod v2sign;

pub use v2sign::{sign, SignatureMethod};
