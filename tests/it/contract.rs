//! The handler contract: every handler type, built from its `[handlers.NAME]` section as the
//! daemon builds it, keeps the same promises to the dispatcher, whatever its target does.
//!
//! - One id per delivery: the target sees the delivery's `webhook-id` on every attempt.
//! - An attempt that outlasts its timeout ends, and is transient (retried).
//! - The target's answers are classed: accepted is done, a refusal worth retrying is
//!   transient, a rejection is permanent.
//! - No secret of the handler's configuration or of the daemon's environment reaches an
//!   error text or an excerpt.
//! - An attempt the shutdown drain stops (its task aborted, as the dispatcher does once
//!   `drain_timeout` has passed) leaves nothing of it running at the target.
//!
//! The same bodies run against each type; a type joins with a [`Subject`] (how to make a
//! section whose target answers as told, and what the target saw) and one line in
//! `contract!` (the broker types' subjects, real brokers behind a sniffing proxy, are in
//! `brokers.rs`). `drm` has no target that sees an id, and the emulator cannot yet fail
//! DescribeDrmDataKey on request, so it is not under contract yet.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Toml};
use vod_eventd::handler::{AnyHandler, Delivery, Failure, HandlerConfig};
use vod_eventd::store::Store;

use crate::brokers::{AmqpSubject, NatsSubject, RedisSubject};
use crate::receiver::Receiver;
use crate::support::eventually;

/// The attempt timeout every contract section sets.
const TIMEOUT: &str = "400ms";
/// A value that must never show: in the section (URL, headers) and in the daemon's environment.
pub(crate) const SECRET: &str = "contract-s3cret-9f1c";

/// What a case asks the target to do with the next attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Answer {
    /// Take it: the attempt is done.
    Accept,
    /// Fail in a way worth retrying.
    Refuse,
    /// Fail in a way retrying cannot fix.
    Reject,
    /// Never answer.
    Hang,
}

/// A handler type under contract.
pub(crate) trait Subject: Sized {
    /// Starts a target in `dir`.
    async fn start(dir: &Path) -> Self;
    /// The `[handlers.h]` section (without its header) whose attempts reach the target, with
    /// the attempt timeout `timeout` and [`SECRET`] wherever the type keeps secrets.
    fn section(&self, timeout: &str) -> String;
    /// How the target answers from now on.
    fn answer(&self, answer: Answer);
    /// The delivery ids the target saw, in order.
    fn ids(&self) -> Vec<String>;
    /// Whether the target is working on an attempt right now.
    fn busy(&self) -> bool;
}

struct Webhook(Receiver);

impl Subject for Webhook {
    async fn start(_: &Path) -> Self {
        Webhook(Receiver::start().await)
    }
    fn section(&self, timeout: &str) -> String {
        let url = format!("http://user:{SECRET}@{}/vod?token={SECRET}", self.0.addr);
        format!("type = \"webhook\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\nheaders = {{ Authorization = \"Bearer {SECRET}\" }}\n")
    }
    fn answer(&self, answer: Answer) {
        self.0.set(|b| {
            (b.status, b.delay) = match answer {
                Answer::Accept => (200, Duration::ZERO),
                Answer::Refuse => (503, Duration::ZERO),
                Answer::Reject => (400, Duration::ZERO),
                Answer::Hang => (200, Duration::from_secs(60)),
            }
        });
    }
    fn ids(&self) -> Vec<String> {
        self.0.recorded().iter().map(|r| r.headers.get("webhook-id").cloned().unwrap_or_default()).collect()
    }
    fn busy(&self) -> bool {
        self.0.in_flight() > 0
    }
}

struct Shell {
    dir: std::path::PathBuf,
}

impl Subject for Shell {
    async fn start(dir: &Path) -> Self {
        // The hook records its id, prints its whole environment (which must not hold the
        // daemon's secrets), then does what the `answer` file says.
        let hook = dir.join("hook");
        std::fs::write(
            &hook,
            "#!/bin/sh\necho \"$VOD_EVENT_ID\" >> \"$0.ids\"\nenv >&2\n\
             case \"$(cat \"$0.answer\")\" in\n  accept) exit 0 ;;\n  refuse) exit 1 ;;\n  reject) exit 3 ;;\n  *) echo $$ > \"$0.pid\"; exec sleep 60 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        Shell { dir: dir.to_path_buf() }
    }
    fn section(&self, timeout: &str) -> String {
        let hook = self.dir.join("hook");
        format!(
            "type = \"shell\"\ncommand = [\"{}\"]\ntimeout = \"{timeout}\"\npermanent_exit_codes = [3]\n",
            hook.display()
        )
    }
    fn answer(&self, answer: Answer) {
        let word = format!("{answer:?}").to_lowercase();
        std::fs::write(self.dir.join("hook.answer"), word).unwrap();
    }
    fn ids(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("hook.ids")).unwrap_or_default();
        text.lines().map(String::from).collect()
    }
    fn busy(&self) -> bool {
        // The hung hook's process (a zombie counts as gone: it is waiting to be reaped).
        let Ok(pid) = std::fs::read_to_string(self.dir.join("hook.pid")) else { return false };
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }
}

/// The handler `subject`'s section builds, with the store it may use.
fn build(section: &str, dir: &Path) -> AnyHandler {
    // Hooks run under `vod-eventd hook-run`; this test process is not vod-eventd.
    vod_eventd::handler::shell::set_supervisor(env!("CARGO_BIN_EXE_vod-eventd").into());
    let text = format!(
        "[vod]\nsecret_id = \"id\"\nsecret_key = \"key\"\n[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\n{section}"
    );
    let config =
        vod_eventd::config::from_figment(figment::Figment::from(Toml::string(&text)), Path::new("contract.toml"))
            .unwrap_or_else(|e| panic!("the contract section is valid: {e}"));
    let handler: &HandlerConfig = &config.handlers["h"];
    let store = Store::open(&dir.join("e.db"), Duration::from_secs(1)).unwrap();
    AnyHandler::build("h", handler, Arc::default(), store).unwrap()
}

fn delivery(attempt: u32) -> Delivery {
    Delivery {
        delivery_id: 7,
        event_id: 3,
        webhook_id: "msg_contract_0007".into(),
        attempt,
        created_at: 0,
        event_type: "NewFileUpload".into(),
        file_id: Some("f1".into()),
        task_id: None,
        body: r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"f1"}}"#.into(),
        source: "default".into(),
        sub_app_id: None,
        claim_token: 0,
    }
}

/// One attempt, bounded far above [`TIMEOUT`] so that a handler ignoring its timeout fails
/// the case instead of hanging it.
async fn attempt(handler: &AnyHandler, n: u32) -> Result<(), Failure> {
    match tokio::time::timeout(Duration::from_secs(20), handler.handle(&delivery(n))).await {
        Ok(outcome) => outcome.map(drop),
        Err(_) => panic!("attempt {n} outlived its {TIMEOUT} timeout by far"),
    }
}

fn assert_no_secret(failure: &Failure) {
    let text = format!("{} {}", failure.message, failure.excerpt.as_deref().unwrap_or_default());
    assert!(!text.contains(SECRET), "a secret in an error text: {text}");
}

async fn every_attempt_of_a_delivery_carries_its_one_id<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let subject = S::start(dir.path()).await;
    let handler = build(&subject.section(TIMEOUT), dir.path());
    subject.answer(Answer::Refuse);
    assert!(attempt(&handler, 1).await.unwrap_err().retryable);
    assert!(attempt(&handler, 2).await.unwrap_err().retryable);
    subject.answer(Answer::Accept);
    attempt(&handler, 3).await.unwrap();
    assert_eq!(subject.ids(), ["msg_contract_0007"; 3]);
}

async fn an_attempt_past_its_timeout_ends_and_is_transient<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let subject = S::start(dir.path()).await;
    let handler = build(&subject.section(TIMEOUT), dir.path());
    subject.answer(Answer::Hang);
    let failure = attempt(&handler, 1).await.unwrap_err();
    assert!(failure.retryable, "a timeout is retried: {failure:?}");
    assert_no_secret(&failure);
}

async fn answers_are_classed_done_transient_or_permanent<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let subject = S::start(dir.path()).await;
    let handler = build(&subject.section(TIMEOUT), dir.path());
    subject.answer(Answer::Reject);
    let rejected = attempt(&handler, 1).await.unwrap_err();
    assert!(!rejected.retryable, "a rejection is permanent: {rejected:?}");
    subject.answer(Answer::Refuse);
    let refused = attempt(&handler, 2).await.unwrap_err();
    assert!(refused.retryable, "a refusal is transient: {refused:?}");
    subject.answer(Answer::Accept);
    attempt(&handler, 3).await.unwrap();
}

async fn no_secret_reaches_an_error_text<S: Subject>() {
    // The daemon's own environment holds a secret the handler must not pass on or quote.
    std::env::set_var("VOD_EVENTD_CONTRACT_SECRET", SECRET);
    let dir = tempfile::tempdir().unwrap();
    let subject = S::start(dir.path()).await;
    let handler = build(&subject.section(TIMEOUT), dir.path());
    for answer in [Answer::Refuse, Answer::Reject, Answer::Hang] {
        subject.answer(answer);
        assert_no_secret(&attempt(&handler, 1).await.unwrap_err());
    }
    drop(subject);
    // And with the target gone (nothing listening, or nothing to run).
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
    let gone = attempt(&handler, 2).await.unwrap_err();
    assert!(gone.retryable, "{gone:?}");
    assert_no_secret(&gone);
}

async fn an_attempt_stopped_by_the_drain_leaves_nothing_running<S: Subject>() {
    let dir = tempfile::tempdir().unwrap();
    let subject = S::start(dir.path()).await;
    // A timeout far away, so that only the stop can end the attempt.
    let handler = Arc::new(build(&subject.section("60s"), dir.path()));
    subject.answer(Answer::Hang);
    let running = handler.clone();
    let task = tokio::spawn(async move { running.handle(&delivery(1)).await.map(drop) });
    eventually(Duration::from_secs(10), "the target works on the attempt", || subject.busy()).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    eventually(Duration::from_secs(10), "nothing of the stopped attempt runs at the target", || !subject.busy()).await;
}

/// Runs every contract case against each handler type: `contract!(name: Subject, ...)`.
macro_rules! contract {
    ($($name:ident: $subject:ty),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_attempt_of_a_delivery_carries_its_one_id() {
                super::every_attempt_of_a_delivery_carries_its_one_id::<$subject>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_attempt_past_its_timeout_ends_and_is_transient() {
                super::an_attempt_past_its_timeout_ends_and_is_transient::<$subject>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn answers_are_classed_done_transient_or_permanent() {
                super::answers_are_classed_done_transient_or_permanent::<$subject>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_attempt_stopped_by_the_drain_leaves_nothing_running() {
                super::an_attempt_stopped_by_the_drain_leaves_nothing_running::<$subject>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_secret_reaches_an_error_text() {
                super::no_secret_reaches_an_error_text::<$subject>().await
            }
        }
    )*};
}

contract!(webhook: Webhook, shell: Shell, redis: RedisSubject, nats: NatsSubject, amqp: AmqpSubject);
