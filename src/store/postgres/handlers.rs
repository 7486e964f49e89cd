//! [`Handlers`] on PostgreSQL.

use super::PgStore;
use crate::store::{HandlerOverview, Handlers, StoreError};

#[async_trait::async_trait]
impl Handlers for PgStore {
    fn pause_handler(&self, handler: &str, reason: Option<&str>) -> Result<Option<String>, StoreError> {
        self.block(self.pause_handler(handler, reason))
    }

    fn resume_handler(&self, handler: &str) -> Result<Option<i64>, StoreError> {
        self.block(self.resume_handler(handler))
    }

    fn handler_overview(&self, configured: &[String]) -> Result<Vec<HandlerOverview>, StoreError> {
        self.block(self.handler_overview(configured))
    }
}
