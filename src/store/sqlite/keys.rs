//! [`Keys`] on SQLite; the contract is in `store/keys.rs`.
//!
//! The `drm_keys` table: data keys fetched for EDKs, stored once. Key material leaves
//! only through [`crate::store::Keys::get_key`] (for `keys get`), never through listings or logs.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::store::{KeyInfo, Keys, NewKey, StoreError};

#[async_trait::async_trait]
impl Keys for SqliteStore {
    async fn insert_keys(&self, keys: Vec<NewKey>) -> Result<usize, StoreError> {
        let now = crate::store::now_ms();
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
                        k.stored_bytes(),
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

    async fn known_edks(&self, edks: Vec<String>) -> Result<Vec<String>, StoreError> {
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

    async fn key_for(&self, file_id: String, edk: String) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT dk FROM drm_keys WHERE edk = ?1 AND file_id = ?2")?;
            Ok(stmt.query_row(params![edk, file_id], |r| r.get(0)).optional()?)
        })
        .await
    }

    fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run_sync(|conn| {
            Ok(conn.query_row("SELECT dk FROM drm_keys WHERE edk = ?", [edk], |r| r.get(0)).optional()?)
        })
    }

    async fn stored_keys(&self, after: String, limit: u32) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT edk, dk FROM drm_keys WHERE edk > ?1 ORDER BY edk LIMIT ?2")?;
            let rows = stmt.query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn replace_key(&self, edk: String, old: Vec<u8>, new: Vec<u8>) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let changed =
                conn.execute("UPDATE drm_keys SET dk = ?1 WHERE edk = ?2 AND dk = ?3", params![new, edk, old])?;
            Ok(changed == 1)
        })
        .await
    }

    fn list_keys(&self, file_id: Option<&str>, limit: u32) -> Result<Vec<KeyInfo>, StoreError> {
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
