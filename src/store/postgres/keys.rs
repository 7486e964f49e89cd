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
}
