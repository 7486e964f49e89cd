//! LISTEN/NOTIFY on PostgreSQL (issue 28): another host's new deliveries wake a dispatcher
//! at once, also after its listening session was lost, and an idle host asks the store
//! nothing beyond its heartbeat. Real daemons, a real PostgreSQL (see `pg.rs`).

use std::time::{Duration, Instant};

use crate::pg::{connect, database, migrated, number, pg_node};
use crate::receiver::Receiver;
use crate::support::*;

/// The idle poll the daemons are given: far longer than any pick-up the tests accept, so
/// only a notice can explain a quick one.
const SLOW_POLL: &str = "[dispatch]\npoll_interval = \"60s\"\nlease_margin = \"1s\"\n";

async fn until(limit: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backends listening for the daemons' notices in database `name`.
async fn listeners(db: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN vod_eventd' AND datname = $1 ORDER BY pid",
        &[&name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The database a test URL names.
fn db_name(url: &str) -> &str {
    url.rsplit_once('/').and_then(|(_, tail)| tail.split_once('?')).expect("a database URL").0
}

/// Enqueues one event at `emu` and returns how long until `receiver` got its delivery.
async fn picked_up(emu: &vod_emulator::Emulator, receiver: &Receiver) -> Duration {
    let before = receiver.recorded().len();
    let started = Instant::now();
    emu.enqueue_generated(1);
    until(Duration::from_secs(20), "the pinned host delivers the new event", async || {
        receiver.recorded().len() > before
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_picks_up_a_delivery_the_first_stored_at_once_also_after_its_session_was_lost() {
    let url = database().await;
    let name = db_name(&url);
    // Host a pulls the events; host b pulls from an empty queue and alone runs the handler.
    let (events, empty) = (emulator(fast_emulator_config()).await, emulator(fast_emulator_config()).await);
    let receiver = Receiver::start().await;
    let config = format!(
        "[handlers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"5s\"\nhosts = [\"b\"]\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n{SLOW_POLL}",
        receiver.url()
    );
    let a = pg_node(&events.endpoint(), &url, &config, "a").await;
    let b = pg_node(&empty.endpoint(), &url, &config, "b").await;
    let db = migrated(&url).await;
    until(Duration::from_secs(30), "both daemons listen", async || listeners(&db, name).await.len() == 2).await;
    // Past both daemons' first steps: from here on only a notice wakes b before 60 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = picked_up(&events, &receiver).await;
    assert!(first < Duration::from_secs(5), "picked up after {first:?}; the idle poll is 60 s");

    // Lose every listening session: each daemon connects and listens again by itself.
    let lost = listeners(&db, name).await;
    for pid in &lost {
        db.execute("SELECT pg_terminate_backend($1)", &[pid]).await.unwrap();
    }
    until(Duration::from_secs(30), "both daemons listen again", async || {
        let now = listeners(&db, name).await;
        now.len() == 2 && now.iter().all(|pid| !lost.contains(pid))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = picked_up(&events, &receiver).await;
    assert!(again < Duration::from_secs(5), "after the lost session, picked up after {again:?}");
    eprintln!("picked up by the other host {first:?} after the pull, {again:?} after a lost session");
    until(Duration::from_secs(20), "both deliveries done", async || {
        number(&db, "SELECT count(*) FROM deliveries WHERE state = 'done'").await == 2
    })
    .await;
    assert_eq!(receiver.recorded().len(), 2, "each delivered once");
    drop((a, b));
}

/// Transactions committed in database `name` (`pg_stat_database`), read from another
/// database (`admin`) so that the reads are not counted.
async fn commits(admin: &tokio_postgres::Client, name: &str) -> i64 {
    admin.query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", &[&name]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_asks_the_store_nothing_beyond_its_heartbeat() {
    let url = database().await;
    let name = db_name(&url);
    let admin = connect(&url.replace(&format!("/{name}?"), "/postgres?")).await;
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    // A fast poll, as before notices: it would step (and read the account check key) 5 times a second.
    let config = format!(
        "[handlers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"5s\"\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[dispatch]\npoll_interval = \"200ms\"\n",
        receiver.url()
    );
    let daemon = pg_node(&emu.endpoint(), &url, &config, "idle").await;
    until(Duration::from_secs(30), "the daemon listens", async || listeners(&admin, name).await.len() == 1).await;
    // A backend reports its commits within 10 s of going idle: past the start-up's.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let window = Duration::from_secs(15);
    let before = commits(&admin, name).await;
    tokio::time::sleep(window).await;
    let committed = commits(&admin, name).await - before;
    eprintln!("an idle host committed {committed} transactions in {window:?}");
    // The heartbeat every 10 s (the handler counts, the status lock's check, the state
    // written): 2 rounds of 3 at most, and one more reported late.
    assert!(committed <= 9, "an idle host committed {committed} transactions in {window:?}");
    drop(daemon);
}
