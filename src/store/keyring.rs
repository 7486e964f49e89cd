//! Envelope encryption of stored data keys at rest (`[keys] encryption_key_file`, or the
//! systemd credential `vod-keys-encryption-key`): each data key is sealed with AES-256-GCM
//! (RustCrypto's `aes-gcm`) under a key-encryption key before it reaches a store, so a
//! PostgreSQL store read by people, or a backup, holds no playable key.
//!
//! **The key file.** One key-encryption key per line, `ID:BASE64` (32 random bytes; `ID` is
//! 1 to 16 of `A-Z a-z 0-9 _ -`); `#` starts a comment. The first key seals, every key
//! opens: to rotate, put a new key first, run `vod-eventd keys rekey` (which seals every
//! stored key under the first), then remove the old line.
//!
//! **A sealed key** in the `dk` column: `"vek1"`, the key id's length (1 byte), the id, a
//! random 12-byte nonce, then the 16-byte ciphertext and the 16-byte tag. The EDK is the
//! associated data, so a sealed key moved to another row does not open. A 16-byte value is
//! a key stored before encryption was turned on (or with it off): it is read as it is, and
//! `keys rekey` seals it.
//!
//! No key, sealed or not, goes into an error message.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;

/// The systemd credential that holds the key file.
pub const KEYRING_CREDENTIAL: &str = "vod-keys-encryption-key";
const MAGIC: &[u8; 4] = b"vek1";
const NONCE_LEN: usize = 12;
const MAX_ID_LEN: usize = 16;
/// Key-encryption keys in one file, at most.
const MAX_KEYS: usize = 64;

/// The key-encryption keys: the first seals, every one opens.
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("ids", &self.ids()).finish()
    }
}

/// Why a stored key does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Sealed, and no key ring is configured.
    #[error("the stored data key is encrypted (key id {0}) and no [keys] encryption_key_file is configured")]
    NoKeyRing(String),
    /// No key ring, on a store whose keys were sealed before ([`crate::store::Store::check_keyring`]).
    #[error("this store's data keys are encrypted (last under key id {0}) but no key-encryption key is configured, so new keys would be stored in the clear: restore the key file (the systemd credential vod-keys-encryption-key, packaged as /etc/vod-eventd/keys-encryption-key) or set [keys] encryption_key_file")]
    KeyRingMissing(String),
    /// Sealed under a key id the ring does not hold.
    #[error("the stored data key is encrypted under key id {0}, which the key file does not hold; add that key back (after the new one) and run `vod-eventd keys rekey`")]
    UnknownId(String),
    /// The tag does not verify: another key under that id, another row, or damage.
    #[error("the stored data key does not decrypt under key id {0} (another key under that id, or a damaged row)")]
    Damaged(String),
    /// Neither 16 bytes nor a sealed value.
    #[error("the stored data key is neither 16 bytes nor an encrypted value")]
    Malformed,
}

impl KeyRing {
    /// Reads a key file (see the module's doc). A file others may read is refused.
    pub fn load(path: &Path) -> Result<KeyRing, String> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{} may be read by group or others; `chmod 0600` it (it holds the key that opens every stored data key)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        KeyRing::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a key file's text. Messages name the line, never its key.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let n = n + 1;
            let (id, b64) = line.split_once(':').ok_or(format!("line {n}: expected ID:BASE64"))?;
            let id = id.trim();
            if id.is_empty()
                || id.len() > MAX_ID_LEN
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("line {n}: the key id must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ -"));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("line {n}: key id {id} is given twice"));
            }
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok().filter(|b| b.len() == 32).ok_or(
                    format!("line {n} (key id {id}): the key must be 32 bytes in base64 (`openssl rand -base64 32`)"),
                )?;
            keys.push((id.to_string(), Aes256Gcm::new_from_slice(&bytes).expect("32 bytes is an AES-256 key")));
            if keys.len() > MAX_KEYS {
                return Err(format!("more than {MAX_KEYS} keys"));
            }
        }
        if keys.is_empty() {
            return Err("no key; add a line `k1:` followed by `openssl rand -base64 32`".into());
        }
        Ok(KeyRing { keys })
    }

    /// The key ids, the sealing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].0
    }

    /// `dk` sealed under the first key, bound to `edk`.
    pub fn seal(&self, edk: &str, dk: &[u8; 16]) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, Payload { msg: dk, aad: edk.as_bytes() }).expect("AES-GCM seals 16 bytes");
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The 16 bytes of a stored value (sealed, or stored before encryption).
    pub fn open(&self, edk: &str, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
        open(Some(self), edk, stored)
    }
}

/// The key id a stored value is sealed under; `None` for a plain 16-byte key.
pub fn sealed_under(stored: &[u8]) -> Result<Option<String>, OpenError> {
    if stored.len() == 16 {
        return Ok(None);
    }
    let rest = stored.strip_prefix(MAGIC.as_slice()).ok_or(OpenError::Malformed)?;
    let (&len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
    let id = rest.get(..len as usize).ok_or(OpenError::Malformed)?;
    String::from_utf8(id.to_vec()).map(Some).map_err(|_| OpenError::Malformed)
}

/// The 16 bytes of a stored value, opened with `ring` if it is sealed.
pub fn open(ring: Option<&KeyRing>, edk: &str, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
    let Some(id) = sealed_under(stored)? else { return Ok(stored.to_vec()) };
    let ring = ring.ok_or_else(|| OpenError::NoKeyRing(id.clone()))?;
    let cipher = ring.keys.iter().find(|(known, _)| *known == id).map(|(_, c)| c);
    let cipher = cipher.ok_or_else(|| OpenError::UnknownId(id.clone()))?;
    let body = &stored[MAGIC.len() + 1 + id.len()..];
    if body.len() != NONCE_LEN + 32 {
        return Err(OpenError::Malformed);
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: edk.as_bytes() })
        .map_err(|_| OpenError::Damaged(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, byte: u8) -> String {
        format!("{id}:{}\n", base64::engine::general_purpose::STANDARD.encode([byte; 32]))
    }

    #[test]
    fn seals_with_the_first_and_opens_with_any() {
        let old = KeyRing::parse(&line("k1", 1)).unwrap();
        let both = KeyRing::parse(&format!("# rotation\n{}{}", line("k2", 2), line("k1", 1))).unwrap();
        assert_eq!(both.ids(), ["k2", "k1"]);
        let dk = [0x42; 16];
        let under_old = old.seal("EDK", &dk);
        assert_eq!(sealed_under(&under_old).unwrap().as_deref(), Some("k1"));
        assert!(!under_old.windows(16).any(|w| w == dk), "the key is not in the sealed value");
        assert_eq!(both.open("EDK", &under_old).unwrap(), dk);
        let under_new = both.seal("EDK", &dk);
        assert_eq!(sealed_under(&under_new).unwrap().as_deref(), Some("k2"));
        assert_eq!(old.open("EDK", &under_new), Err(OpenError::UnknownId("k2".into())));
        assert_eq!(both.open("OTHER", &under_new), Err(OpenError::Damaged("k2".into())), "bound to its EDK");
        assert_ne!(both.seal("EDK", &dk), under_new, "a fresh nonce each time");
        // Stored before encryption: read as it is; sealed without a ring: refused, named.
        assert_eq!(both.open("EDK", &dk).unwrap(), dk);
        assert_eq!(open(None, "EDK", &under_new), Err(OpenError::NoKeyRing("k2".into())));
        assert_eq!(open(None, "EDK", b"short"), Err(OpenError::Malformed));
    }

    #[test]
    fn key_files_are_checked_without_quoting_a_key() {
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        for bad in ["", "# nothing\n", "k1\n", &format!("k1:{secret}\n"), &format!("{}{}", line("a", 1), line("a", 2))]
        {
            let e = KeyRing::parse(bad).unwrap_err();
            assert!(!e.contains(&secret), "{e}");
        }
        assert!(KeyRing::parse(&line("bad id", 1)).is_err());
        assert!(format!("{:?}", KeyRing::parse(&line("k1", 9)).unwrap()).contains("k1"));
    }
}
