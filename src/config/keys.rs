//! `[keys]`: how the data keys the `drm` handler stores are kept: `encryption_key_file` (or
//! the systemd credential `vod-keys-encryption-key`) turns on their envelope encryption at
//! rest ([`crate::store::keyring`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::keyring::{KeyRing, KEYRING_CREDENTIAL};

/// `[keys]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A file of key-encryption keys (`ID:BASE64` per line, mode 0600; the first seals,
    /// all open). Without it (and without the credential), data keys are stored as they are.
    pub encryption_key_file: Option<PathBuf>,
}

impl KeysConfig {
    /// The key ring: `encryption_key_file`, else the systemd credential
    /// `vod-keys-encryption-key`, else none. A file that does not load is an error naming
    /// the file and line, never a key.
    pub fn keyring(&self) -> Result<Option<KeyRing>, String> {
        self.keyring_in(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref().map(Path::new))
    }

    /// [`KeysConfig::keyring`] with the credentials in `credentials`.
    pub fn keyring_in(&self, credentials: Option<&Path>) -> Result<Option<KeyRing>, String> {
        if let Some(file) = &self.encryption_key_file {
            return KeyRing::load(file).map(Some).map_err(|e| format!("keys.encryption_key_file {e}"));
        }
        let Some(file) = credentials.map(|dir| dir.join(KEYRING_CREDENTIAL)).filter(|f| f.exists()) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&file).map_err(|e| format!("systemd credential {}: {e}", file.display()))?;
        if text.trim().starts_with(super::credential::NOT_LOADED) {
            // The packaged unit's default when the file is absent: encryption is off.
            return Ok(None);
        }
        KeyRing::parse(&text).map(Some).map_err(|e| format!("systemd credential {KEYRING_CREDENTIAL}: {e}"))
    }
}
