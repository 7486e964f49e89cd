//! Replays and retries by range on PostgreSQL: the same jobs, statements and rules as the
//! SQLite store's (`store/sqlite/ranges.rs`), each batch and its cursor in one transaction.

use deadpool_postgres::GenericClient;

use super::PgStore;
use crate::store::sqlite::ranges::{range_params, select_sql};
use crate::store::StoreError;
use crate::store::{Range, RangeJob, Ranges, RANGE_BATCH};

/// `select_sql` in PostgreSQL's spelling: `?1`–`?3` and `?7` are BIGINT, `?4`–`?6` TEXT
/// (typed, since some appear only in `IS NULL`).
fn pg_sql(sql: &str) -> String {
    (1..=7).rev().fold(sql.to_string(), |sql, n| {
        let kind = if (4..=6).contains(&n) { "text" } else { "bigint" };
        sql.replace(&format!("?{n}"), &format!("${n}::{kind}"))
    })
}

async fn load_job(c: &impl GenericClient, kind: &str, args: &str) -> Result<Option<RangeJob>, StoreError> {
    let row = c
        .query_opt(
            "SELECT id, since_ms, until_ms, cursor, total, done, finished_at FROM range_jobs WHERE kind = $1 AND args = $2",
            &[&kind, &args],
        )
        .await?;
    Ok(row.map(|r| RangeJob {
        id: r.get(0),
        since_ms: r.get(1),
        until_ms: r.get(2),
        cursor: r.get(3),
        total: r.get(4),
        done: r.get(5),
        finished_at: r.get(6),
    }))
}

async fn count(c: &impl GenericClient, range: &Range, after: i64, since: i64, until: i64) -> Result<i64, StoreError> {
    let [a, b, d] = range_params(range);
    let row = c.query_one(&pg_sql(&select_sql(range, "count(*)")), &[&after, &since, &until, &a, &b, &d]).await?;
    Ok(row.get(0))
}

impl PgStore {
    /// See [`crate::store::Ranges::range_job`].
    pub async fn range_job(&self, kind: &str, args: &str) -> Result<Option<RangeJob>, StoreError> {
        load_job(&self.client().await?, kind, args).await
    }

    /// See [`crate::store::Ranges::range_count`].
    pub async fn range_count(&self, range: &Range, after: i64, since: i64, until: i64) -> Result<i64, StoreError> {
        count(&self.client().await?, range, after, since, until).await
    }

    /// See [`crate::store::Ranges::start_range_job`].
    pub async fn start_range_job(
        &self,
        range: &Range,
        args: &str,
        since: i64,
        until: i64,
        now: i64,
    ) -> Result<RangeJob, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let total = count(&tx, range, 0, since, until).await?;
        tx.execute("DELETE FROM range_jobs WHERE kind = $1 AND args = $2", &[&range.kind(), &args]).await?;
        tx.execute(
            "INSERT INTO range_jobs (kind, args, since_ms, until_ms, total, started_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
            &[&range.kind(), &args, &since, &until, &total, &now],
        )
        .await?;
        let job = load_job(&tx, range.kind(), args).await?.expect("just inserted");
        tx.commit().await?;
        Ok(job)
    }

    /// See [`crate::store::Ranges::range_batch`].
    pub async fn range_batch(&self, job: &RangeJob, range: &Range, now: i64) -> Result<RangeJob, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let [a, b, d] = range_params(range);
        let sql = pg_sql(&format!("{} ORDER BY id LIMIT ?7", select_sql(range, "id")));
        let rows = tx.query(&sql, &[&job.cursor, &job.since_ms, &job.until_ms, &a, &b, &d, &RANGE_BATCH]).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut changed = 0;
        match range {
            Range::Replay { handler, .. } => {
                let handlers = [handler.clone()];
                for id in &ids {
                    let r = tx.query_one("SELECT dedupe_key, occurrence FROM events WHERE id = $1", &[id]).await?;
                    let key: Vec<u8> = r.get(0);
                    super::ingest::route_new_event(&tx, *id, &key, r.get(1), &handlers, now).await?;
                    changed += 1;
                }
            }
            Range::Retry { state, .. } => {
                for id in &ids {
                    changed += tx
                        .execute(
                            "UPDATE deliveries SET state = 'pending', next_attempt_at = $2, created_at = $2, updated_at = $2,
                                    lease_until = NULL, claim_token = NULL, claimed_by = NULL
                             WHERE id = $1 AND state = $3",
                            &[id, &now, state],
                        )
                        .await? as i64;
                }
            }
        }
        let cursor = ids.last().copied().unwrap_or(job.cursor);
        let finished = (ids.len() as i64) < RANGE_BATCH;
        tx.execute(
            "UPDATE range_jobs SET cursor = $2, done = done + $3, updated_at = $4::bigint,
                    finished_at = CASE WHEN $5 THEN $4::bigint ELSE NULL END WHERE id = $1",
            &[&job.id, &cursor, &changed, &now, &finished],
        )
        .await?;
        if changed > 0 {
            self.notify(&tx, super::listen::Topic::Work).await?;
        }
        tx.commit().await?;
        Ok(RangeJob { cursor, done: job.done + changed, finished_at: finished.then_some(now), ..job.clone() })
    }
}

#[async_trait::async_trait]
impl Ranges for PgStore {
    fn range_job(&self, range: &Range, args: &str) -> Result<Option<RangeJob>, StoreError> {
        self.block(self.range_job(range.kind(), args))
    }

    fn range_count(&self, range: &Range, after: i64, since_ms: i64, until_ms: i64) -> Result<i64, StoreError> {
        self.block(self.range_count(range, after, since_ms, until_ms))
    }

    fn start_range_job(&self, range: &Range, args: &str, since_ms: i64, until_ms: i64) -> Result<RangeJob, StoreError> {
        let now = crate::store::now_ms();
        self.block(self.start_range_job(range, args, since_ms, until_ms, now))
    }

    fn range_batch(&self, job: &RangeJob, range: &Range) -> Result<RangeJob, StoreError> {
        let now = crate::store::now_ms();
        self.block(self.range_batch(job, range, now))
    }
}
