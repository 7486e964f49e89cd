//! [`Keys`] on PostgreSQL.

use super::PgStore;
use crate::store::{KeyInfo, Keys, NewKey, StoreError};

#[async_trait::async_trait]
impl Keys for PgStore {
    async fn insert_keys(&self, keys: Vec<NewKey>) -> Result<usize, StoreError> {
        self.insert_keys(&keys).await
    }

    async fn known_edks(&self, edks: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.known_edks(edks).await
    }

    async fn key_for(&self, file_id: String, edk: String) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT dk FROM drm_keys WHERE edk = $1 AND file_id = $2").await?;
        Ok(client.query_opt(&stmt, &[&edk, &file_id]).await?.map(|r| r.get(0)))
    }

    fn get_key(&self, edk: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.block(self.get_key(edk))
    }

    fn list_keys(&self, file_id: Option<&str>, limit: u32) -> Result<Vec<KeyInfo>, StoreError> {
        self.block(self.list_keys(file_id, limit))
    }

    async fn stored_keys(&self, after: String, limit: u32) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("SELECT edk, dk FROM drm_keys WHERE edk > $1 ORDER BY edk LIMIT $2").await?;
        let rows = client.query(&stmt, &[&after, &i64::from(limit)]).await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn replace_key(&self, edk: String, old: Vec<u8>, new: Vec<u8>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached("UPDATE drm_keys SET dk = $1 WHERE edk = $2 AND dk = $3").await?;
        Ok(client.execute(&stmt, &[&new, &edk, &old]).await? == 1)
    }
}
