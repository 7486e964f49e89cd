//! The shared run of `events replay --since` and `deliveries retry --state`: count first,
//! then batches of [`RANGE_BATCH`] committed with the job's cursor, a progress line on
//! stderr after each. A run with the same arguments resumes an interrupted job where its
//! last committed batch ended; `--restart` starts it over.

use std::io::Write;
use std::time::Duration;

use super::time::rfc3339;
use crate::store::{Range, RangeJob, Store, RANGE_BATCH};

/// Test hook: a pause after each committed batch, in ms, so a test can interrupt a run
/// between batches. Outside the `VOD_EVENTD_` prefix, which is read as config.
pub const BATCH_DELAY_ENV: &str = "VOD_TEST_RANGE_BATCH_DELAY_MS";

/// One range run as the command line asked for it.
pub(super) struct RangeRun<'a> {
    /// What to select and do.
    pub range: Range,
    /// The arguments as given: the job's identity.
    pub args: String,
    /// `--since` and `--until` as given.
    pub since: &'a str,
    /// See `since`.
    pub until: &'a str,
    /// Count only.
    pub dry_run: bool,
    /// Start over instead of resuming.
    pub restart: bool,
    /// `replay to NAME` or `retry`, for messages.
    pub verb: String,
    /// What is counted (`events`, `dead deliveries`).
    pub noun: String,
}

impl RangeRun<'_> {
    /// Runs it, writing the count and the outcome to `out` and progress to stderr.
    pub fn run(self, store: &Store, out: &mut impl Write) -> anyhow::Result<()> {
        let job = if self.restart { None } else { store.range_job(&self.range, &self.args)? };
        if let Some(job) = job.as_ref().filter(|j| j.finished_at.is_some()) {
            writeln!(
                out,
                "0 {} left: this {} (job {}) ran to the end at {} ({} of {} done); pass --restart to run it again",
                self.noun,
                self.verb,
                job.id,
                rfc3339(job.finished_at.unwrap_or_default()),
                job.done,
                job.total
            )?;
            return Ok(());
        }
        let (since_ms, until_ms) = match &job {
            Some(j) => (j.since_ms, j.until_ms),
            None => (super::time::parse_time("--since", self.since)?, super::time::parse_time("--until", self.until)?),
        };
        anyhow::ensure!(since_ms < until_ms, "--since must be before --until");
        let window = format!("from {} to {}", rfc3339(since_ms), rfc3339(until_ms));
        let left = store.range_count(&self.range, job.as_ref().map_or(0, |j| j.cursor), since_ms, until_ms)?;
        match &job {
            Some(j) => writeln!(
                out,
                "{left} {} left to {} ({window}); resuming job {}: {} of {} done before",
                self.noun, self.verb, j.id, j.done, j.total
            )?,
            None => writeln!(out, "{left} {} to {} ({window})", self.noun, self.verb)?,
        }
        if self.dry_run {
            writeln!(out, "nothing changed (--dry-run)")?;
            return Ok(());
        }
        out.flush()?;
        let mut job = match job {
            Some(j) => j,
            None => store.start_range_job(&self.range, &self.args, since_ms, until_ms)?,
        };
        let before = job.done;
        let delay = batch_delay();
        loop {
            job = store.range_batch(&job, &self.range)?;
            eprintln!("{}: {} of {} done (job {}, cursor {})", self.verb, job.done, job.total, job.id, job.cursor);
            if job.finished_at.is_some() {
                break;
            }
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
        }
        self.report(&job, job.done - before, out)
    }

    fn report(&self, job: &RangeJob, this_run: i64, out: &mut impl Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "{this_run} {} scheduled by this run ({} of {} in job {}, in batches of {RANGE_BATCH}); the running daemon delivers them within a second",
            self.noun, job.done, job.total, job.id
        )?;
        Ok(())
    }
}

fn batch_delay() -> Option<Duration> {
    std::env::var(BATCH_DELAY_ENV).ok()?.parse().ok().map(Duration::from_millis)
}
