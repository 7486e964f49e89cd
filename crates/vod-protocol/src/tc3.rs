//! The API 3.0 request signature, TC3-HMAC-SHA256, as Tencent's SDKs compute it for a
//! JSON POST to `/` with `content-type` and `host` signed:
//!
//! 1. CanonicalRequest = `POST\n/\n\ncontent-type:<ct>\nhost:<host>\n\ncontent-type;host\n<hex sha256(body)>`;
//! 2. StringToSign = `TC3-HMAC-SHA256\n<timestamp>\n<date>/<service>/tc3_request\n<hex sha256(CanonicalRequest)>`
//!    (date = UTC day of the timestamp, `YYYY-MM-DD`);
//! 3. `kDate = HMAC("TC3" + key, date)`, `kService = HMAC(kDate, service)`,
//!    `kSigning = HMAC(kService, "tc3_request")`, `Signature = hex(HMAC(kSigning, StringToSign))`;
//! 4. `Authorization: TC3-HMAC-SHA256 Credential=<id>/<date>/<service>/tc3_request, SignedHeaders=content-type;host, Signature=<hex>`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name.
pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// The headers signed.
pub const SIGNED_HEADERS: &str = "content-type;host";

/// What is signed for one request.
#[derive(Debug, Clone, Copy)]
pub struct Tc3Request<'a> {
    /// `SecretId`.
    pub secret_id: &'a str,
    /// Service name (`vod`).
    pub service: &'a str,
    /// The `Host` header value (with `:port` when not the default).
    pub host: &'a str,
    /// The `Content-Type` header value.
    pub content_type: &'a str,
    /// Unix seconds (`X-TC-Timestamp`).
    pub timestamp: i64,
    /// The exact body bytes.
    pub body: &'a [u8],
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DD` (UTC) of a Unix timestamp (proleptic Gregorian, days-from-civil inverse).
pub fn utc_date(timestamp: i64) -> String {
    let days = timestamp.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl Tc3Request<'_> {
    /// The canonical request string.
    pub fn canonical_request(&self) -> String {
        format!(
            "POST\n/\n\ncontent-type:{}\nhost:{}\n\n{SIGNED_HEADERS}\n{}",
            self.content_type,
            self.host,
            hex(&Sha256::digest(self.body))
        )
    }

    /// The hex signature.
    pub fn signature(&self, secret_key: &[u8]) -> String {
        let date = utc_date(self.timestamp);
        let scope = format!("{date}/{}/tc3_request", self.service);
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{scope}\n{}",
            self.timestamp,
            hex(&Sha256::digest(self.canonical_request().as_bytes()))
        );
        let mut key = b"TC3".to_vec();
        key.extend_from_slice(secret_key);
        let k_date = hmac(&key, date.as_bytes());
        let k_service = hmac(&k_date, self.service.as_bytes());
        let k_signing = hmac(&k_service, b"tc3_request");
        hex(&hmac(&k_signing, string_to_sign.as_bytes()))
    }

    /// The `Authorization` header value.
    pub fn authorization(&self, secret_key: &[u8]) -> String {
        format!(
            "{ALGORITHM} Credential={}/{}/{}/tc3_request, SignedHeaders={SIGNED_HEADERS}, Signature={}",
            self.secret_id,
            utc_date(self.timestamp),
            self.service,
            self.signature(secret_key)
        )
    }
}

/// The parts of an `Authorization` header, for a server to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    /// `SecretId`.
    pub secret_id: String,
    /// The credential's date.
    pub date: String,
    /// The credential's service.
    pub service: String,
    /// `SignedHeaders`.
    pub signed_headers: String,
    /// The hex signature.
    pub signature: String,
}

/// Parses `TC3-HMAC-SHA256 Credential=id/date/service/tc3_request, SignedHeaders=..., Signature=...`.
pub fn parse_authorization(value: &str) -> Option<ParsedAuthorization> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        let (key, val) = part.split_once('=')?;
        match key {
            "Credential" => credential = Some(val),
            "SignedHeaders" => signed_headers = Some(val),
            "Signature" => signature = Some(val),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let (secret_id, date, service, terminator) = (scope.next()?, scope.next()?, scope.next()?, scope.next()?);
    (terminator == "tc3_request").then(|| ParsedAuthorization {
        secret_id: secret_id.into(),
        date: date.into(),
        service: service.into(),
        signed_headers: signed_headers.unwrap_or_default().into(),
        signature: signature.unwrap_or_default().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED_ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******";
    const MASKED_KEY: &[u8] = b"Gu5t9xGARNpq86cd98joQYCN3*******";

    #[test]
    fn official_vector() {
        let body = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let req = Tc3Request {
            secret_id: MASKED_ID,
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            content_type: "application/json; charset=utf-8",
            timestamp: 1551113065,
            body,
        };
        assert_eq!(utc_date(1551113065), "2019-02-25");
        assert_eq!(hex(&Sha256::digest(body)), "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064");
        assert_eq!(
            hex(&Sha256::digest(req.canonical_request().as_bytes())),
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(req.signature(MASKED_KEY), "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c");
        let parsed = parse_authorization(&req.authorization(MASKED_KEY)).unwrap();
        assert_eq!(
            (parsed.secret_id.as_str(), parsed.date.as_str(), parsed.service.as_str()),
            (MASKED_ID, "2019-02-25", "cvm")
        );
        assert_eq!(parsed.signature, req.signature(MASKED_KEY));
    }

    #[test]
    fn vod_vectors() {
        for (body, expected) in [
            (&b"{}"[..], "59cac1f97fd0501907b5b1298e1c3e48165db3ce1d5567f229afaa0e8b642446"),
            (
                &br#"{"EventHandles":["EventHandle1","EventHandle2"]}"#[..],
                "0aeb1a7e6a161a84506f27daf82b957fdb6c172806523b74d29342911f3a8e8e",
            ),
        ] {
            let req = Tc3Request {
                secret_id: MASKED_ID,
                service: "vod",
                host: "vod.tencentcloudapi.com",
                content_type: "application/json; charset=utf-8",
                timestamp: 1551113065,
                body,
            };
            assert_eq!(req.signature(MASKED_KEY), expected);
        }
    }

    #[test]
    fn dates_across_eras() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_507_200), "2026-11-24");
        assert_eq!(utc_date(-86_400), "1969-12-31");
    }
}
