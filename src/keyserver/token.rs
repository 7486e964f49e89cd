//! Key server tokens: what an app backend mints so that a player may fetch the keys of
//! one video (or a few, or those under a prefix) until a moment, and no other.
//!
//! # The format (version `vod1`)
//!
//! ```text
//! payload = "vod1:" EXPIRY ":" SCOPE
//!   EXPIRY = the Unix time in seconds after which the token is refused (decimal)
//!   SCOPE  = "f=" FILEID *("," FILEID)     the token opens these file ids
//!          / "p=" PREFIX                    the token opens every file id starting with PREFIX
//! mac     = HMAC-SHA256(key = the secret's bytes, message = payload)      (32 bytes)
//! token   = base64url(payload || mac), without padding
//! ```
//!
//! The token is URL-safe and holds no `.` (VOD cuts it out of a playlist requested as
//! `voddrm.token.<TOKEN>.<name>.m3u8` and appends `&token=<TOKEN>` to the key URI). The MAC
//! is checked first, against every configured secret (the first one signs: rotation), in
//! constant time; only then is the payload read.
//!
//! Minting in Python:
//! ```text
//! payload = f"vod1:{int(time.time()) + 7200}:f={file_id}".encode()
//! mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
//! token = base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The payload's version tag.
pub const VERSION: &str = "vod1";
/// The MAC's length in bytes.
const MAC_LEN: usize = 32;
/// The longest token accepted (characters): a playlist name and a URL carry it.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a token opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These file ids.
    Files(Vec<String>),
    /// Every file id starting with this (not empty).
    Prefix(String),
}

impl Scope {
    fn check(&self) -> Result<(), String> {
        let bad_char = |s: &str| s.chars().any(|c| c == ',' || c.is_control() || c.is_whitespace());
        match self {
            Scope::Files(ids) if ids.is_empty() => Err("a token needs at least one file id".into()),
            Scope::Files(ids) if ids.iter().any(|i| i.is_empty() || bad_char(i)) => {
                Err("a file id must not be empty or hold `,`, a space or a control character".into())
            }
            Scope::Prefix(p) if p.is_empty() => Err("an empty prefix would open every file; name one".into()),
            Scope::Prefix(p) if bad_char(p) => Err("a prefix must not hold `,`, a space or a control character".into()),
            _ => Ok(()),
        }
    }

    fn text(&self) -> String {
        match self {
            Scope::Files(ids) => format!("f={}", ids.join(",")),
            Scope::Prefix(p) => format!("p={p}"),
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        if let Some(ids) = text.strip_prefix("f=") {
            let ids: Vec<String> = ids.split(',').map(String::from).collect();
            ids.iter().all(|i| !i.is_empty()).then_some(Scope::Files(ids))
        } else {
            text.strip_prefix("p=").filter(|p| !p.is_empty()).map(|p| Scope::Prefix(p.into()))
        }
    }

    /// Whether the scope opens `file_id`.
    pub fn opens(&self, file_id: &str) -> bool {
        match self {
            Scope::Files(ids) => ids.iter().any(|i| i == file_id),
            Scope::Prefix(p) => file_id.starts_with(p.as_str()),
        }
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, too short or too long, or a payload that does not parse.
    #[error("the token is malformed")]
    Malformed,
    /// No configured secret made its MAC: forged, altered, or signed with a retired secret.
    #[error("the token's signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Valid, but for other files.
    #[error("the token is for another file")]
    OtherFile,
}

impl TokenError {
    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::OtherFile => "token_other_file",
        }
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length")
}

/// A token for `scope`, valid until `expires` (Unix seconds), signed with `secret`.
pub fn mint(secret: &[u8], scope: &Scope, expires: i64) -> Result<String, String> {
    scope.check()?;
    let payload = format!("{VERSION}:{expires}:{}", scope.text());
    let mut m = mac(secret);
    m.update(payload.as_bytes());
    let mut bytes = payload.into_bytes();
    bytes.extend_from_slice(&m.finalize().into_bytes());
    let token = URL_SAFE_NO_PAD.encode(bytes);
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("the token would be {} characters, above {MAX_TOKEN_LEN}; name fewer files", token.len()));
    }
    Ok(token)
}

/// Checks tokens against every configured secret.
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} secrets)", self.secrets.len())
    }
}

impl Verifier {
    /// A verifier for these secrets (the first is the one that signs).
    pub fn new(secrets: Vec<Vec<u8>>) -> Verifier {
        Verifier { secrets }
    }

    /// Whether `token` opens `file_id` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, file_id: &str, now: i64) -> Result<(), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        if bytes.len() <= MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        // Every secret is tried, so the time taken does not say which one matched.
        let mut signed = false;
        for secret in &self.secrets {
            let mut m = mac(secret);
            m.update(payload);
            signed |= m.verify_slice(tag).is_ok();
        }
        if !signed {
            return Err(TokenError::BadSignature);
        }
        let text = std::str::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        let mut parts = text.splitn(3, ':');
        let (Some(VERSION), Some(expiry), Some(scope)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let expiry: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let scope = Scope::parse(scope).ok_or(TokenError::Malformed)?;
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        if !scope.opens(file_id) {
            return Err(TokenError::OtherFile);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"old-secret-old-secret-old-secret";
    const NEW: &[u8] = b"new-secret-new-secret-new-secret";
    const NOW: i64 = 1_800_000_000;

    fn files(ids: &[&str]) -> Scope {
        Scope::Files(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_token_opens_its_file_until_it_expires() {
        let token = mint(NEW, &files(&["5285890781763144364"]), NOW + 60).unwrap();
        let v = Verifier::new(vec![NEW.to_vec()]);
        assert_eq!(v.verify(&token, "5285890781763144364", NOW), Ok(()));
        assert_eq!(v.verify(&token, "5285890781763144364", NOW + 59), Ok(()));
        assert_eq!(v.verify(&token, "5285890781763144364", NOW + 60), Err(TokenError::Expired));
        assert_eq!(v.verify(&token, "5285890781763144365", NOW), Err(TokenError::OtherFile));
        assert_eq!(v.verify(&token, "528589078176314436", NOW), Err(TokenError::OtherFile), "not a prefix match");
    }

    #[test]
    fn a_token_is_url_safe_and_holds_no_dot() {
        for n in 0..200 {
            let token = mint(NEW, &files(&[&format!("file-{n}"), "x~y"]), NOW + n).unwrap();
            assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{token}");
        }
    }

    #[test]
    fn lists_and_prefixes() {
        let v = Verifier::new(vec![NEW.to_vec()]);
        let list = mint(NEW, &files(&["a1", "b2"]), NOW + 60).unwrap();
        assert_eq!(v.verify(&list, "a1", NOW), Ok(()));
        assert_eq!(v.verify(&list, "b2", NOW), Ok(()));
        assert_eq!(v.verify(&list, "c3", NOW), Err(TokenError::OtherFile));
        let prefix = mint(NEW, &Scope::Prefix("52858".into()), NOW + 60).unwrap();
        assert_eq!(v.verify(&prefix, "5285890781763144364", NOW), Ok(()));
        assert_eq!(v.verify(&prefix, "6285890781763144364", NOW), Err(TokenError::OtherFile));
        assert!(mint(NEW, &Scope::Prefix(String::new()), NOW).is_err(), "no token for every file");
        assert!(mint(NEW, &files(&[]), NOW).is_err());
        assert!(mint(NEW, &files(&["a,b"]), NOW).is_err());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let v = Verifier::new(vec![NEW.to_vec()]);
        let token = mint(NEW, &files(&["f1"]), NOW + 60).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Every single bit flipped anywhere, payload or MAC, is refused.
        for i in 0..bytes.len() * 8 {
            bytes[i / 8] ^= 1 << (i % 8);
            let altered = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(v.verify(&altered, "f1", NOW).is_err(), "bit {i}");
            bytes[i / 8] ^= 1 << (i % 8);
        }
        // A payload rewritten to another file or a later expiry, with the old MAC.
        let tag = bytes[bytes.len() - MAC_LEN..].to_vec();
        for payload in [format!("vod1:{}:f=f1", NOW + 6000), format!("vod1:{}:f=f2", NOW + 60), "vod1:1:p=f".into()] {
            let forged = URL_SAFE_NO_PAD.encode([payload.as_bytes(), &tag].concat());
            assert_eq!(v.verify(&forged, "f1", NOW), Err(TokenError::BadSignature));
        }
        for junk in ["", "a", "not base64!", "vod1.x", &"A".repeat(MAX_TOKEN_LEN + 4), &format!("{token}=")] {
            assert!(v.verify(junk, "f1", NOW).is_err(), "{junk:.20}");
        }
        // A correctly signed payload that is not of this format.
        for payload in ["vod2:9999999999:f=f1", "vod1:soon:f=f1", "vod1:9999999999:x=f1", "vod1:9999999999:f="] {
            let mut m = mac(NEW);
            m.update(payload.as_bytes());
            let token = URL_SAFE_NO_PAD.encode([payload.as_bytes(), &m.finalize().into_bytes()].concat());
            assert_eq!(v.verify(&token, "f1", NOW), Err(TokenError::Malformed), "{payload}");
        }
    }

    #[test]
    fn rotation_the_first_secret_signs_and_every_one_verifies() {
        let before = mint(OLD, &files(&["f1"]), NOW + 60).unwrap();
        let during = Verifier::new(vec![NEW.to_vec(), OLD.to_vec()]);
        let after = Verifier::new(vec![NEW.to_vec()]);
        assert_eq!(during.verify(&before, "f1", NOW), Ok(()), "tokens of the old secret still work");
        let new = mint(NEW, &files(&["f1"]), NOW + 60).unwrap();
        assert_eq!(during.verify(&new, "f1", NOW), Ok(()));
        assert_eq!(after.verify(&before, "f1", NOW), Err(TokenError::BadSignature), "the retired secret is gone");
        assert_eq!(Verifier::new(vec![]).verify(&new, "f1", NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn the_documented_python_recipe_makes_the_same_token() {
        // What the module documentation's three lines compute, spelled out by hand.
        let payload = format!("vod1:{}:f=5285890781763144364", NOW);
        let mut m = mac(NEW);
        m.update(payload.as_bytes());
        let by_hand = URL_SAFE_NO_PAD.encode([payload.as_bytes(), &m.finalize().into_bytes()].concat());
        assert_eq!(mint(NEW, &files(&["5285890781763144364"]), NOW).unwrap(), by_hand);
    }
}
