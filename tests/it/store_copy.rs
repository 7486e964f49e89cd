//! `vod-eventd store copy`: a SQLite history into PostgreSQL and back, through a SIGKILL
//! in the middle, with the counts checked and new writes on the copy getting fresh ids.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::pg::{database, pg_daemon, psql};
use crate::receiver::Receiver;
use crate::support::*;

const EVENTS: usize = 400;

fn route(receiver: &Receiver) -> String {
    format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[handlers.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
         secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
        receiver.url()
    )
}

fn copy_cmd(from: &str, to: &str, batch: usize) -> std::process::Command {
    let mut cmd = cli();
    cmd.args(["store", "copy", "--from", from, "--to", to, "--batch", &batch.to_string()]);
    cmd
}

/// (id, hex dedupe key, occurrence) of every event, and (id, event, handler, webhook id,
/// state) of every delivery, as PostgreSQL prints them.
fn pg_history(url: &str) -> (BTreeSet<Vec<String>>, BTreeSet<Vec<String>>) {
    let events = psql(url, "SELECT id, encode(dedupe_key, 'hex'), occurrence FROM events");
    let deliveries = psql(url, "SELECT id, event_id, handler, webhook_id, state FROM deliveries");
    (events.into_iter().collect(), deliveries.into_iter().collect())
}

fn sqlite_history(path: &std::path::Path) -> (BTreeSet<Vec<String>>, BTreeSet<Vec<String>>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let rows = |sql: &str| -> BTreeSet<Vec<String>> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, String>(i)).collect::<rusqlite::Result<Vec<_>>>())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    (
        rows("SELECT CAST(id AS TEXT), lower(hex(dedupe_key)), CAST(occurrence AS TEXT) FROM events"),
        rows("SELECT CAST(id AS TEXT), CAST(event_id AS TEXT), handler, webhook_id, state FROM deliveries"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_history_moves_to_postgresql_through_a_sigkill_and_back() {
    // A real history: events pulled, routed and delivered by the daemon on SQLite.
    let emu = emulator(fast_emulator_config()).await;
    let receiver = Receiver::start().await;
    let mut daemon = TestDaemon::for_emulator(&emu, &route(&receiver)).await;
    emu.enqueue_generated(EVENTS);
    eventually(Duration::from_secs(60), "every event delivered", || receiver.accepted().len() >= EVENTS).await;
    eventually(Duration::from_secs(30), "every delivery done", || {
        daemon.delivery_states().get("done").copied() == Some(EVENTS as i64)
    })
    .await;
    daemon.terminate().await;
    let db = daemon.db_path.to_str().unwrap().to_string();
    let url = database().await;

    // One row per transaction, killed part-way through the events.
    let mut child = copy_cmd(&db, &url, 1).stderr(std::process::Stdio::null()).spawn().unwrap();
    let copied = || psql(&url, "SELECT count(*) FROM events").first().map_or(0, |r| r[0].parse::<usize>().unwrap());
    eventually(Duration::from_secs(60), "a part copied", || copied() >= EVENTS / 4).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = copied();
    assert!(at_kill < EVENTS, "the copy finished before it could be killed ({at_kill} events)");

    // Run again: it resumes and the counts agree.
    let out = copy_cmd(&db, &url, 50).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let events_line = said.lines().find(|l| l.trim_start().starts_with("events ")).unwrap();
    assert!(events_line.contains("equal"), "{said}");
    assert!(
        events_line.contains(&format!("({} copied by this run)", EVENTS - at_kill)),
        "the second run copied only what the first left: {said}"
    );
    assert!(!said.contains("DIFFERENT"), "{said}");
    let sqlite = sqlite_history(&daemon.db_path);
    assert_eq!(sqlite.0.len(), EVENTS);
    assert_eq!(pg_history(&url), sqlite, "same ids, dedupe keys, webhook ids and states");
    let files = |n: &str| n.parse::<i64>().unwrap();
    let pg_files = files(&psql(&url, "SELECT count(*) FROM event_files")[0][0]);
    assert!(pg_files >= EVENTS as i64, "event files copied: {pg_files}");
    assert!(files(&psql(&url, "SELECT count(*) FROM attempts")[0][0]) >= EVENTS as i64);

    // A daemon on the copy stores new events after the copied ids, and folds nothing new
    // into old rows.
    let mut on_pg = pg_daemon(&emu, &url, &route(&receiver)).await;
    emu.enqueue_generated(10);
    eventually(Duration::from_secs(60), "new events on the copy", || copied() == EVENTS + 10).await;
    let max_old = sqlite.0.iter().map(|r| r[0].parse::<i64>().unwrap()).max().unwrap();
    let new_min = files(&psql(&url, &format!("SELECT min(id) FROM events WHERE id > {max_old}"))[0][0]);
    assert!(new_min > max_old);
    eventually(Duration::from_secs(60), "new events delivered", || receiver.accepted().len() >= EVENTS + 10).await;
    on_pg.terminate().await;

    // And back into a new SQLite file.
    let back = tempfile::tempdir().unwrap();
    let back_db = back.path().join("back.db");
    let out = copy_cmd(&url, back_db.to_str().unwrap(), 100).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sqlite_history(&back_db), pg_history(&url));

    // A store of another history is refused, and nothing is written into it.
    let other = tempfile::tempdir().unwrap();
    let other_db = other.path().join("other.db");
    let conn = rusqlite::Connection::open(&back_db).unwrap();
    conn.execute("UPDATE events SET dedupe_key = x'00' WHERE id = (SELECT max(id) FROM events)", []).unwrap();
    drop(conn);
    std::fs::copy(&back_db, &other_db).unwrap();
    let out = copy_cmd(other_db.to_str().unwrap(), &url, 100).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds events that are not"), "{err}");
}

/// A password in `--to`/`--from` is readable by every local user in /proc/PID/cmdline:
/// `store copy` warns and names `--password-file` and the environment variable; the same
/// URL passed through `VOD_EVENTD_COPY_FROM` draws no warning, and a URL without a
/// password none either. (The server on port 1 refuses, so each run ends quickly.)
#[test]
fn a_password_on_the_command_line_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("copy.db").display().to_string();
    let stderr = |cmd: &mut std::process::Command| String::from_utf8(cmd.output().unwrap().stderr).unwrap();
    for url in
        ["postgresql://vod:s3cret@127.0.0.1:1/vod", "postgresql://vod@127.0.0.1:1/vod?sslmode=disable&password=s3cret"]
    {
        let text = stderr(cli().args(["store", "copy", "--from", url, "--to", &db]));
        assert!(
            text.contains("warning: --from holds a password, which every local user can read in /proc/")
                && text.contains(
                    "pass --password-file FILE, or set VOD_EVENTD_COPY_FROM to the URL instead of passing --from"
                ),
            "{url}: {text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        let text = stderr(cli().args(["store", "copy", "--to", &db]).env("VOD_EVENTD_COPY_FROM", url));
        assert!(!text.contains("warning"), "{text}");
        assert!(text.contains("--from postgresql://"), "the copy still ran and failed on the server: {text}");
    }
    let text = stderr(cli().args(["store", "copy", "--from=postgresql://vod:s3cret@127.0.0.1:1/vod", "--to", &db]));
    assert!(text.contains("warning: --from holds a password"), "--from=URL: {text}");
    let text = stderr(cli().args(["store", "copy", "--from", "postgresql://vod@127.0.0.1:1/vod", "--to", &db]));
    assert!(!text.contains("warning"), "{text}");
}
