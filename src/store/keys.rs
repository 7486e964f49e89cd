//! The `drm_keys` table: data keys fetched for EDKs, stored once. Key material leaves
//! only through [`Keys::get_key`] (for `keys get`) and [`Keys::key_for`] (for the key
//! server, bound to its file), never through listings or logs. Backends store and return
//! the `dk` column as given; sealing and opening (encryption at rest) happen in
//! [`crate::store::Store`]'s methods of the same names ([`crate::store::keyring`]).

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

/// A data key to store.
#[derive(Clone)]
pub struct NewKey {
    /// The EDK (KMS-encrypted data key), as in the event.
    pub edk: String,
    /// The 16-byte data key.
    pub dk: [u8; 16],
    /// The file it protects.
    pub file_id: Option<String>,
    /// `keySource` (e.g. `VodBuildInKMS`).
    pub key_source: Option<String>,
    /// The encryption template.
    pub definition: Option<i64>,
    /// The event it came from.
    pub event_id: i64,
    /// What the backend stores instead of `dk`: the key sealed by the store handle's key
    /// ring ([`crate::store::Store::insert_keys`] sets it); `None`: `dk` as it is.
    pub sealed: Option<Vec<u8>>,
}

impl NewKey {
    /// The bytes a backend writes to the `dk` column.
    pub fn stored_bytes(&self) -> &[u8] {
        self.sealed.as_deref().unwrap_or(&self.dk)
    }
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("edk", &self.edk).field("dk", &"[redacted]").finish_non_exhaustive()
    }
}

/// A stored key, without its material.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// The EDK.
    pub edk: String,
    /// The file it protects.
    pub file_id: Option<String>,
    /// `keySource`.
    pub key_source: Option<String>,
    /// The encryption template.
    pub definition: Option<i64>,
    /// The event it came from.
    pub event_id: Option<i64>,
    /// When it was fetched, Unix ms.
    pub fetched_at: i64,
}

/// The keys operations every backend implements.
#[async_trait]
pub trait Keys: Send + Sync {
    /// Stores keys; an EDK already stored is left as it is. Returns how many were new.
    async fn insert_keys(&self, keys: Vec<NewKey>) -> Result<usize, StoreError>;

    /// Which of `edks` already have a key.
    async fn known_edks(&self, edks: Vec<String>) -> Result<Vec<String>, StoreError>;

    /// The data key for `edk`, only when its row ties it to `file_id` (the key server's
    /// read: a key is served for its own file alone). `None` both for an unknown EDK and
    /// for an EDK stored for another file, or for none.
    async fn key_for(&self, file_id: String, edk: String) -> Result<Option<Vec<u8>>, StoreError>;

    /// The data key for an EDK.
    fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stored keys, newest first, without key material.
    fn list_keys(&self, file_id: Option<&str>, limit: u32) -> Result<Vec<KeyInfo>, StoreError>;

    /// Up to `limit` rows as stored (the `dk` column, sealed or not), by EDK, after `after`:
    /// for `keys rekey`.
    async fn stored_keys(&self, after: String, limit: u32) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Replaces the stored bytes of `edk` with `new` if they are still `old`; whether they were.
    async fn replace_key(&self, edk: String, old: Vec<u8>, new: Vec<u8>) -> Result<bool, StoreError>;
}
