//! [`Activity`] on PostgreSQL.

use super::PgStore;
use std::collections::BTreeMap;

use crate::store::{Activity, Hourly, StoreError};

#[async_trait::async_trait]
impl Activity for PgStore {
    fn events_per_hour(&self, now_ms: i64) -> Result<Hourly, StoreError> {
        self.block(self.events_per_hour(now_ms))
    }

    fn failures_per_hour(&self, now_ms: i64) -> Result<BTreeMap<String, Hourly>, StoreError> {
        self.block(self.failures_per_hour(now_ms))
    }
}
