//! The v2 request signature (Tencent calls it "signature v1"), exactly as the official
//! SDK `qcloudapi-sdk-python` computes it:
//!
//! 1. every parameter except `Signature`, names with `_` replaced by `.`;
//! 2. sorted by name (byte order, so upper case sorts first);
//! 3. joined as `name=value` with `&`, values **not** URL-encoded;
//! 4. source = `METHOD` + `host` + `path` + `?` + joined;
//! 5. `Base64(HMAC-SHA1(key, source))`, or HMAC-SHA256 when `SignatureMethod=HmacSHA256`.

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// Which HMAC the `SignatureMethod` parameter selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureMethod {
    /// `HmacSHA1`, also what an absent or unknown `SignatureMethod` means.
    HmacSha1,
    /// `HmacSHA256`.
    #[default]
    HmacSha256,
}

impl SignatureMethod {
    /// The value of the `SignatureMethod` request parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha1 => "HmacSHA1",
            SignatureMethod::HmacSha256 => "HmacSHA256",
        }
    }

    /// The method a server applies for a given `SignatureMethod` parameter value:
    /// `HmacSHA256` selects SHA-256, anything else (or nothing) SHA-1.
    pub fn from_param(value: Option<&str>) -> Self {
        match value {
            Some("HmacSHA256") => SignatureMethod::HmacSha256,
            _ => SignatureMethod::HmacSha1,
        }
    }
}

/// The canonical name of a parameter: `_` becomes `.` (`msgHandle_0` → `msgHandle.0`).
pub fn canonical_name(name: &str) -> String {
    name.replace('_', ".")
}

/// The string that is signed: `METHOD host path ? sorted name=value pairs`.
///
/// `params` must not contain `Signature`; it is skipped if present.
pub fn source_string<'a, I>(http_method: &str, host: &str, path: &str, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(String, &str)> = params
        .into_iter()
        .filter(|(name, _)| *name != "Signature")
        .map(|(name, value)| (canonical_name(name), value))
        .collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut source = format!("{}{}{}?", http_method.to_ascii_uppercase(), host, path);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            source.push('&');
        }
        source.push_str(name);
        source.push('=');
        source.push_str(value);
    }
    source
}

/// Signs `source` with `secret_key`: standard Base64 (with padding) of the HMAC.
pub fn sign_source(secret_key: &[u8], method: SignatureMethod, source: &str) -> String {
    let digest = match method {
        SignatureMethod::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret_key).expect("HMAC takes any key length");
            mac.update(source.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        SignatureMethod::HmacSha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret_key).expect("HMAC takes any key length");
            mac.update(source.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Computes the `Signature` parameter for a request.
///
/// The method is taken from the `SignatureMethod` parameter among `params`, as the server does.
pub fn sign<'a, I>(secret_key: &[u8], http_method: &str, host: &str, path: &str, params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let params: Vec<(&str, &str)> = params.into_iter().collect();
    let method = SignatureMethod::from_param(params.iter().find(|(n, _)| *n == "SignatureMethod").map(|(_, v)| *v));
    sign_source(secret_key, method, &source_string(http_method, host, path, params))
}

/// Compares two signatures in time independent of where they differ.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA";
    const KEY: &[u8] = b"Gu5t9xGARNpq86cd98joQYCN3Cozk1qA";

    #[test]
    fn official_vector_describe_instances() {
        let params = [
            ("Action", "DescribeInstances"),
            ("Nonce", "11886"),
            ("Region", "gz"),
            ("SecretId", ID),
            ("Timestamp", "1465185768"),
            ("instanceIds.0", "ins-09dx96dg"),
            ("limit", "20"),
            ("offset", "0"),
        ];
        let source = source_string("GET", "cvm.api.qcloud.com", "/v2/index.php", params);
        assert_eq!(
            source,
            "GETcvm.api.qcloud.com/v2/index.php?Action=DescribeInstances&Nonce=11886&Region=gz&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&Timestamp=1465185768&instanceIds.0=ins-09dx96dg&limit=20&offset=0"
        );
        assert_eq!(sign(KEY, "GET", "cvm.api.qcloud.com", "/v2/index.php", params), "NSI3UqqD99b/UJb4tbG/xZpRW64=");
    }

    #[test]
    fn vod_vectors_both_methods_and_verbs() {
        let cases = [
            ("GET", "HmacSHA1", "A1mKXyMJqqB2GCVPJ0cg20r2OuU="),
            ("GET", "HmacSHA256", "Xt8QFvc8gCpqRl1TIOIk5QPADuhVnTh2Gjz48HcIbfI="),
            ("POST", "HmacSHA1", "X9UaRS1GIPYi03Ov3s9KsRzqAME="),
            ("POST", "HmacSHA256", "aZjs9gvxn2PHiU9n/oSKHCNUYClYats+OYHnRIybYiA="),
        ];
        for (verb, method, expected) in cases {
            let params = [
                ("Action", "PullEvent"),
                ("Nonce", "11886"),
                ("Region", "gz"),
                ("SecretId", ID),
                ("Timestamp", "1465185768"),
                ("SignatureMethod", method),
            ];
            assert_eq!(sign(KEY, verb, "vod.api.qcloud.com", "/v2/index.php", params), expected, "{verb} {method}");
        }
    }

    #[test]
    fn confirm_vector_underscore_names_are_canonicalised() {
        let base = [
            ("Action", "ConfirmEvent"),
            ("Nonce", "11886"),
            ("Region", "gz"),
            ("SecretId", ID),
            ("Timestamp", "1465185768"),
        ];
        let dotted: Vec<_> =
            base.iter().copied().chain([("msgHandle.0", "MsgHandle1"), ("msgHandle.1", "MsgHandle2")]).collect();
        let underscored: Vec<_> =
            base.iter().copied().chain([("msgHandle_0", "MsgHandle1"), ("msgHandle_1", "MsgHandle2")]).collect();
        let a = sign(KEY, "GET", "vod.api.qcloud.com", "/v2/index.php", dotted);
        let b = sign(KEY, "GET", "vod.api.qcloud.com", "/v2/index.php", underscored);
        assert_eq!(a, "qlTC02eGmcBmaS+6m8yw2hwyrG8=");
        assert_eq!(a, b);
    }

    #[test]
    fn signature_param_is_never_signed() {
        let with = [("Action", "PullEvent"), ("Signature", "abc")];
        let without = [("Action", "PullEvent")];
        assert_eq!(sign(KEY, "GET", "h", "/p", with), sign(KEY, "GET", "h", "/p", without));
    }

    #[test]
    fn constant_time_compare() {
        assert!(signatures_equal("abc=", "abc="));
        assert!(!signatures_equal("abc=", "abd="));
        assert!(!signatures_equal("abc", "abc="));
    }
}
