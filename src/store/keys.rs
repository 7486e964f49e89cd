//! The `drm_keys` table: data keys fetched for EDKs, stored once. Key material leaves
//! only through [`Store::get_key`] (for `keys get`), never through listings or logs.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Store, StoreError};

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

impl Store {
    /// Stores keys; an EDK already stored is left as it is. Returns how many were new.
    pub async fn insert_keys(&self, keys: Vec<NewKey>) -> Result<usize, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.insert_keys(&keys).await;
        }
        let now = super::now_ms();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let mut added = 0;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO drm_keys (edk, dk, file_id, key_source, definition, event_id, fetched_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for k in &keys {
                    added += stmt.execute(params![
                        k.edk,
                        &k.dk[..],
                        k.file_id,
                        k.key_source,
                        k.definition,
                        k.event_id,
                        now
                    ])?;
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    /// Which of `edks` already have a key.
    pub async fn known_edks(&self, edks: Vec<String>) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.known_edks(edks).await;
        }
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT 1 FROM drm_keys WHERE edk = ?")?;
            let mut known = Vec::new();
            for edk in edks {
                if stmt.exists([&edk])? {
                    known.push(edk);
                }
            }
            Ok(known)
        })
        .await
    }

    /// The data key for an EDK.
    pub fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.get_key(edk));
        }
        self.run_sync(|conn| {
            Ok(conn.query_row("SELECT dk FROM drm_keys WHERE edk = ?", [edk], |r| r.get(0)).optional()?)
        })
    }

    /// Stored keys, newest first, without key material.
    pub fn list_keys(&self, file_id: Option<&str>, limit: u32) -> Result<Vec<KeyInfo>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.block(pg.list_keys(file_id, limit));
        }
        self.run_sync(|conn| {
            let mut stmt = conn.prepare(
                "SELECT edk, file_id, key_source, definition, event_id, fetched_at FROM drm_keys
                 WHERE ?1 IS NULL OR file_id = ?1 ORDER BY fetched_at DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![file_id, limit], |r| {
                Ok(KeyInfo {
                    edk: r.get(0)?,
                    file_id: r.get(1)?,
                    key_source: r.get(2)?,
                    definition: r.get(3)?,
                    event_id: r.get(4)?,
                    fetched_at: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
