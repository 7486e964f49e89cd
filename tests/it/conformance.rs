//! The store's conformance suite: the same bodies against every backend, through the
//! store's interface only (`vod_eventd::store::Store` and its traits), each pinning one
//! operation's contract. A new backend proves itself by passing all of them: add it to
//! [`open`] and to the `both_stores!` macro.

use std::sync::Arc;
use std::time::Duration;

use vod_eventd::alerts::{Alert, AlertKind};
use vod_eventd::config::ApiVersion;
use vod_eventd::event::ReceivedEvent;
use vod_eventd::route::Routed;
use vod_eventd::store::{
    webhook_id, AttemptRecord, Batch, BreakerStep, DeliveryFilter, EventFilter, FirstClaim, Inserted, NewKey, Next,
    Range, RouteFn, Singleton, Store, StoreError, Want,
};

use crate::support::Backend;

/// A fresh, empty store of `backend` (kept alive by the returned guard).
async fn open(backend: Backend) -> (Store, Option<tempfile::TempDir>) {
    let (store, guard, _) = open_spec(backend).await;
    (store, guard)
}

/// [`open`], with how `store copy` names the store (its path or URL).
async fn open_spec(backend: Backend) -> (Store, Option<tempfile::TempDir>, String) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.db");
            (Store::open(&path, Duration::from_secs(5)).unwrap(), Some(dir), path.display().to_string())
        }
        Backend::Postgres => {
            let url = crate::pg::database().await;
            let config = vod_eventd::config::StoreConfig { url: Some(url.clone().into()), ..Default::default() };
            // Opened as the CLI opens it: both its synchronous and its async operations work.
            let store = tokio::task::spawn_blocking(move || Store::open_for_cli(&config)).await.unwrap().unwrap();
            (store, None, url)
        }
    }
}

fn ev(content: &str) -> ReceivedEvent {
    ReceivedEvent::from_content(content, ApiVersion::V2)
}

fn upload(n: usize) -> ReceivedEvent {
    ev(&format!(r#"{{"eventType":"NewFileUpload","data":{{"fileId":"f{n}"}}}}"#))
}

fn to(handlers: &[&str]) -> Vec<String> {
    handlers.iter().map(|h| h.to_string()).collect()
}

fn route_to(handlers: &'static [&'static str]) -> Arc<RouteFn> {
    Arc::new(move |_| Routed { handlers: to(handlers), ..Routed::default() })
}

fn all(limit: u32) -> DeliveryFilter {
    DeliveryFilter { limit, ..Default::default() }
}

fn outcome(d: &vod_eventd::handler::Delivery, next: Next) -> AttemptRecord {
    AttemptRecord {
        delivery_id: d.delivery_id,
        attempt: d.attempt,
        claim_token: d.claim_token,
        started_at: vod_eventd::store::now_ms(),
        duration_ms: 1,
        status: Some(200),
        error: (!matches!(next, Next::Done)).then(|| "failed".into()),
        excerpt: None,
        next,
    }
}

async fn claim(store: &Store, handler: &str, limit: usize, now: i64) -> Vec<vod_eventd::handler::Delivery> {
    store.claim_due(handler.into(), limit, now, Duration::from_secs(30)).await.unwrap()
}

both_stores!(
    a_redelivery_folds_into_its_row_and_content_seen_after_a_confirm_is_a_new_occurrence,
    a_group_ingest_records_confirmations_first_and_routes_only_new_events,
    duplicates_in_a_group_fold_into_the_first_which_alone_is_routed_in_pull_order,
    new_deliveries_are_claimed_as_they_are_stored_up_to_each_want_and_never_for_a_paused_handler,
    an_event_is_found_by_every_file_it_names_and_lists_filter,
    a_claim_is_leased_and_a_late_outcome_never_settles_a_newer_claim,
    outcomes_settle_retry_and_dead_and_operators_revive_and_replay_with_the_same_id,
    deliveries_are_listed_newest_change_first_across_states_filtered_and_limited,
    a_paused_handler_gets_nothing_claimed_and_its_breaker_probes,
    ranges_run_in_batches_and_resume_after_their_cursor,
    alerts_are_routed_once_a_minute_per_kind_and_subject,
    keys_are_stored_once_and_never_listed_with_their_material,
    a_key_is_served_only_for_the_file_its_row_names,
    keys_are_sealed_at_rest_old_ones_stay_readable_and_rekey_rotates,
    retention_keeps_events_with_work_left_and_orphans_are_counted_apart,
    state_credentials_activity_and_size,
);

async fn a_redelivery_folds_into_its_row_and_content_seen_after_a_confirm_is_a_new_occurrence(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let a = ev(r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#);
    let reordered = ev(r#"{"data":{"fileId":"1"},"eventType":"NewFileUpload"}"#);
    let first = store.insert_events(vec![(a.clone(), to(&["h"]))]).await.unwrap()[0];
    assert!(first.new);
    let again = store.insert_events(vec![(reordered, to(&["h"])), (a.clone(), to(&["h"]))]).await.unwrap();
    assert!(again.iter().all(|i| i.id == first.id && !i.new), "redeliveries fold, whatever the member order");
    let row = store.get_event(first.id).unwrap().unwrap();
    assert_eq!((row.times_seen, row.occurrence, row.confirmed_at), (3, 1, None));
    assert_eq!(row.content, r#"{"eventType":"NewFileUpload","data":{"fileId":"1"}}"#, "stored as first received");
    assert_eq!(store.list_deliveries(&all(10)).unwrap().len(), 1, "a redelivery is not routed again");

    store.ingest(Vec::new(), vec![(first.id, 7)]).await.unwrap();
    store.ingest(Vec::new(), vec![(first.id, 9)]).await.unwrap();
    assert_eq!(store.get_event(first.id).unwrap().unwrap().confirmed_at, Some(7), "the first confirmation is kept");
    let second = store.insert_events(vec![(a.clone(), to(&["h"]))]).await.unwrap()[0];
    assert!(second.new && second.id != first.id, "seen again after a confirm: a new occurrence");
    assert_eq!(store.get_event(second.id).unwrap().unwrap().occurrence, 2);
    let ids: Vec<String> = store.deliveries().unwrap().into_iter().map(|d| d.webhook_id).collect();
    assert_eq!(ids, [webhook_id(&a.dedupe_key, 1, "h"), webhook_id(&a.dedupe_key, 2, "h")]);

    // The same content from another source is an event of its own.
    let other = a.clone().with_source("other", Some(5));
    let third = store.insert_events(vec![(other, to(&["h"]))]).await.unwrap()[0];
    assert!(third.new);
    assert_eq!(store.get_event(third.id).unwrap().unwrap().sub_app_id, Some(5));
    assert_eq!(store.count_events().unwrap(), 3);
}

async fn a_group_ingest_records_confirmations_first_and_routes_only_new_events(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let stored = store.insert_events(vec![(upload(0), vec![])]).await.unwrap()[0];
    let batches = vec![
        Batch { events: vec![upload(1), upload(2)].into(), route: route_to(&["a"]) },
        Batch { events: vec![upload(0), upload(3), upload(1)].into(), route: route_to(&["b"]) },
    ];
    let out = store.ingest(batches, vec![(stored.id, 1)]).await.unwrap();
    let shape: Vec<Vec<(bool, Vec<String>)>> =
        out.iter().map(|b| b.iter().map(|(i, r)| (i.new, r.handlers.clone())).collect()).collect();
    assert_eq!(
        shape,
        [
            vec![(true, to(&["a"])), (true, to(&["a"]))],
            // upload(0) was confirmed in this same group: a new occurrence; upload(1) folds.
            vec![(true, to(&["b"])), (true, to(&["b"])), (false, vec![])],
        ]
    );
    assert_eq!(out[1][2].0.id, out[0][0].0.id);
    let mut handlers: Vec<String> = store.deliveries().unwrap().into_iter().map(|d| d.handler).collect();
    handlers.sort();
    assert_eq!(handlers, ["a", "a", "b", "b"]);
    let highest = out.iter().flatten().map(|(i, _)| i.id).max().unwrap();
    assert_eq!(store.max_event_id().unwrap(), highest, "ids in a group follow no particular order");
}

async fn duplicates_in_a_group_fold_into_the_first_which_alone_is_routed_in_pull_order(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let (a, b, c) = (upload(1), upload(2), upload(3));
    let x = store.insert_events(vec![(upload(0), to(&["h"]))]).await.unwrap()[0];
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recording = |handler: &'static str| -> Arc<RouteFn> {
        let calls = calls.clone();
        Arc::new(move |e: &ReceivedEvent| {
            calls.lock().unwrap().push((handler, e.content.clone()));
            Routed { handlers: to(&[handler]), ..Routed::default() }
        })
    };
    let batches = vec![
        Batch { events: vec![a.clone(), upload(0), a.clone(), b.clone()].into(), route: recording("one") },
        Batch { events: vec![a.clone(), c.clone(), upload(0), b.clone(), a.clone()].into(), route: recording("two") },
    ];
    let out = store.ingest(batches, Vec::new()).await.unwrap();
    let (id_a, id_b, id_c) = (out[0][0].0.id, out[0][3].0.id, out[1][1].0.id);
    let shape: Vec<Vec<(i64, bool, Vec<String>)>> =
        out.iter().map(|b| b.iter().map(|(i, r)| (i.id, i.new, r.handlers.clone())).collect()).collect();
    assert_eq!(
        shape,
        [
            vec![(id_a, true, to(&["one"])), (x.id, false, vec![]), (id_a, false, vec![]), (id_b, true, to(&["one"]))],
            vec![
                (id_a, false, vec![]),
                (id_c, true, to(&["two"])),
                (x.id, false, vec![]),
                (id_b, false, vec![]),
                (id_a, false, vec![]),
            ],
        ],
        "the first of a content is new, later ones fold into it; results in the batches' order"
    );
    assert_eq!(
        *calls.lock().unwrap(),
        [("one", a.content.clone()), ("one", b.content.clone()), ("two", c.content.clone())],
        "routed once per new row, in pull order"
    );
    let seen = |id: i64| {
        let row = store.get_event(id).unwrap().unwrap();
        (row.times_seen, row.occurrence)
    };
    assert_eq!([seen(id_a), seen(id_b), seen(id_c), seen(x.id)], [(4, 1), (2, 1), (1, 1), (3, 1)]);
    let mut ids: Vec<String> = store.deliveries().unwrap().into_iter().map(|d| d.webhook_id).collect();
    let mut want = vec![
        webhook_id(&upload(0).dedupe_key, 1, "h"),
        webhook_id(&a.dedupe_key, 1, "one"),
        webhook_id(&b.dedupe_key, 1, "one"),
        webhook_id(&c.dedupe_key, 1, "two"),
    ];
    ids.sort();
    want.sort();
    assert_eq!(ids, want, "one delivery per new row");

    // Confirmed in the same group: the first is a new occurrence, the second folds into it.
    let batches = vec![Batch { events: vec![a.clone(), a.clone()].into(), route: recording("one") }];
    let out = store.ingest(batches, vec![(id_a, 1), (id_a, 2)]).await.unwrap();
    let again = out[0][0].0;
    assert!(again.new && again.id != id_a && out[0][1].0 == Inserted { id: again.id, new: false });
    assert_eq!((seen(again.id), seen(id_a)), ((2, 2), (4, 1)));
    assert_eq!(store.get_event(id_a).unwrap().unwrap().confirmed_at, Some(1), "an id listed twice keeps its first");
    assert_eq!(calls.lock().unwrap().len(), 4);
    assert_eq!(store.count_events().unwrap(), 5);
}

async fn new_deliveries_are_claimed_as_they_are_stored_up_to_each_want_and_never_for_a_paused_handler(
    backend: Backend,
) {
    let (store, _guard) = open(backend).await;
    store.pause_handler("paused", None).unwrap();
    let events: Vec<ReceivedEvent> = (0..3).map(upload).collect();
    let batches = vec![Batch { events: events.clone().into(), route: route_to(&["a", "b", "paused"]) }];
    let lease = Duration::from_secs(60);
    let claim = |handler: &str, limit: usize| FirstClaim { handler: handler.into(), limit, lease };
    let wants = vec![claim("a", 2), claim("paused", 3)];
    let out = store.ingest_claiming(batches, Vec::new(), wants).await.unwrap();
    let ids: Vec<i64> = out.rows[0].iter().map(|(row, _)| row.id).collect();
    let mut claimed: Vec<(usize, i64, u32, String, String)> = out
        .claimed
        .iter()
        .map(|(want, d)| (*want, d.event_id, d.attempt, d.webhook_id.clone(), d.body.clone()))
        .collect();
    claimed.sort();
    let first = |n: usize| (0, ids[n], 1, webhook_id(&events[n].dedupe_key, 1, "a"), events[n].content.clone());
    let mut expected = vec![first(0), first(1)];
    expected.sort(); // On PostgreSQL a group's ids follow its keys.
    assert_eq!(claimed, expected, "handler a's first two in pull order, nothing for b or the paused one");
    assert!(out.left_pending());
    let state = |event_id: i64, handler: &str| {
        let d =
            store.deliveries().unwrap().into_iter().find(|d| d.event_id == event_id && d.handler == handler).unwrap();
        (d.state, d.attempts)
    };
    assert_eq!(state(ids[0], "a"), ("running".into(), 1));
    assert_eq!(state(ids[1], "a"), ("running".into(), 1));
    for (event_id, handler) in [(ids[2], "a"), (ids[0], "b"), (ids[0], "paused"), (ids[2], "paused")] {
        assert_eq!(state(event_id, handler), ("pending".into(), 0), "{handler} of event {event_id}");
    }

    // The outbox's claim takes only what was left pending; an outcome settles a delivery
    // claimed as it was stored like any other.
    let now = vod_eventd::store::now_ms();
    let more = store.settle_and_claim(Arc::from([]), vec![Want::new("a".into(), 10, lease)], now).await.unwrap();
    let more: Vec<i64> = more.deliveries.iter().map(|(_, d)| d.event_id).collect();
    assert_eq!(more, [ids[2]]);
    let done = Arc::from([outcome(&out.claimed[0].1, Next::Done)]);
    store.settle_and_claim(done, Vec::new(), now).await.unwrap();
    assert_eq!(state(out.claimed[0].1.event_id, "a"), ("done".into(), 1));
    // A claim left by a process that stopped before its attempt goes back to pending.
    assert_eq!(store.requeue_running().await.unwrap(), 2, "the other first claim and the outbox's");
    assert_eq!(state(out.claimed[1].1.event_id, "a"), ("pending".into(), 0));

    // Every new delivery claimed: nothing left pending to announce.
    let batches = vec![Batch { events: vec![upload(9)].into(), route: route_to(&["a"]) }];
    let all = store.ingest_claiming(batches, Vec::new(), vec![claim("a", 5)]).await.unwrap();
    assert_eq!(all.claimed.len(), 1);
    assert!(!all.left_pending());
}

async fn an_event_is_found_by_every_file_it_names_and_lists_filter(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let split = ReceivedEvent::from_content(
        r#"{"EventType":"SplitMediaComplete","SplitMediaCompleteEvent":{"TaskId":"t","FileInfoSet":[{"Input":{"FileId":"in"},"Output":{"FileId":"out1"}},{"Input":{"FileId":"in"},"Output":{"FileId":"out2"}}]}}"#,
        ApiVersion::V3,
    );
    let rows = store.insert_events(vec![(split, vec![]), (upload(1), vec![])]).await.unwrap();
    let id = rows[0].id;
    for file in ["out1", "out2", "in"] {
        let found = store.list_events(&EventFilter { file_id: Some(file.into()), limit: 10, ..Default::default() });
        assert_eq!(found.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [id], "{file}");
    }
    assert_eq!(
        store.event_files(id).unwrap(),
        [("out1".into(), "output".into()), ("out2".into(), "output".into()), ("in".into(), "input".into())]
    );
    let by_type = EventFilter { event_type: Some("NewFileUpload".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_events(&by_type).unwrap().len(), 1);
    let future = EventFilter { since_ms: Some(vod_eventd::store::now_ms() + 60_000), limit: 10, ..Default::default() };
    assert!(store.list_events(&future).unwrap().is_empty());
    assert_eq!(store.list_events(&EventFilter { limit: 1, ..Default::default() }).unwrap().len(), 1, "limit");
    let lowest = rows.iter().map(|r| r.id).min().unwrap();
    assert_eq!(store.events_after(lowest, 10).unwrap().len(), 1, "after an id");
    assert_eq!(store.events_after(0, 10).unwrap()[0].id, lowest, "oldest first");
    assert_eq!(store.backfill_files(100).await.unwrap(), 0, "nothing left to index");
}

async fn a_claim_is_leased_and_a_late_outcome_never_settles_a_newer_claim(backend: Backend) {
    let (store, _guard) = open(backend).await;
    store.insert_events(vec![(upload(1), to(&["h"]))]).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let lease = Duration::from_millis(300);
    let first = store.claim_due("h".into(), 10, now, lease).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert!(claim(&store, "h", 10, now).await.is_empty(), "a leased delivery is not claimed twice");
    assert_eq!(store.sweep_expired_leases(now).await.unwrap(), 0, "the lease still runs");
    // A lease passes once both the caller's time and the store's own clock say so (a shared
    // store judges leases by the database's clock, whatever a host's clock says).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.sweep_expired_leases(vod_eventd::store::now_ms()).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the lease never passed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = vod_eventd::store::now_ms();
    let second = claim(&store, "h", 10, now).await;
    assert_eq!((second.len(), second[0].attempt), (1, 2), "claimed again, the lost attempt counted");
    // The first attempt's outcome arrives late: recorded, but it does not settle the delivery.
    store.finish_attempt(outcome(&first[0], Next::Done)).await.unwrap();
    assert_eq!(store.deliveries().unwrap()[0].state, "running");
    store.finish_attempt(outcome(&second[0], Next::Done)).await.unwrap();
    assert_eq!(store.deliveries().unwrap()[0].state, "done");
    assert_eq!(store.attempts().unwrap().len(), 2, "both attempts recorded");
    // Running rows left by a crash go back to pending at the next start.
    store.insert_events(vec![(upload(2), to(&["h"]))]).await.unwrap();
    let now = vod_eventd::store::now_ms();
    assert_eq!(claim(&store, "h", 10, now).await.len(), 1);
    assert_eq!(store.requeue_running().await.unwrap(), 1);
    assert_eq!(claim(&store, "h", 10, now).await[0].attempt, 1, "a requeued attempt is not counted");
}

async fn deliveries_are_listed_newest_change_first_across_states_filtered_and_limited(backend: Backend) {
    let (store, _guard) = open(backend).await;
    store.insert_events((0..4).map(|i| (upload(i), to(&["h", "g"]))).collect()).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let h = claim(&store, "h", 3, now).await;
    store.finish_attempts(vec![outcome(&h[0], Next::Done), outcome(&h[1], Next::Dead)]).await.unwrap();
    let g = claim(&store, "g", 1, now).await;
    store.finish_attempt(outcome(&g[0], Next::Done)).await.unwrap();
    // The whole listing: every row, each state present, newest change first (ties: newest row).
    let rows = store.list_deliveries(&all(20)).unwrap();
    let mut ids: Vec<i64> = rows.iter().map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, store.deliveries().unwrap().iter().map(|d| d.id).collect::<Vec<_>>(), "every row listed");
    let states: std::collections::BTreeSet<&str> = rows.iter().map(|d| d.state.as_str()).collect();
    assert_eq!(states.into_iter().collect::<Vec<_>>(), ["dead", "done", "pending", "running"]);
    assert!(rows.windows(2).all(|w| (w[0].updated_at, w[0].id) > (w[1].updated_at, w[1].id)), "newest change first");
    // Filtered and limited: the same rows in the same order as the whole listing has them.
    let listed = |state: Option<&str>, handler: Option<&str>, limit: u32| -> Vec<i64> {
        let filter = DeliveryFilter { state: state.map(Into::into), handler: handler.map(Into::into), limit };
        store.list_deliveries(&filter).unwrap().iter().map(|d| d.id).collect()
    };
    let expected = |state: Option<&str>, handler: Option<&str>, limit: usize| -> Vec<i64> {
        let kept = rows.iter().filter(|d| state.is_none_or(|s| d.state == s) && handler.is_none_or(|h| d.handler == h));
        kept.take(limit).map(|d| d.id).collect()
    };
    assert_eq!(listed(None, None, 3), expected(None, None, 3));
    for handler in ["h", "g"] {
        assert_eq!(listed(None, Some(handler), 20), expected(None, Some(handler), 20), "{handler}");
    }
    for state in ["done", "dead", "pending", "running"] {
        assert_eq!(listed(Some(state), None, 20), expected(Some(state), None, 20), "{state}");
        assert_eq!(listed(Some(state), Some("h"), 1), expected(Some(state), Some("h"), 1), "{state} of h");
    }
    assert!(listed(Some("gone"), None, 20).is_empty(), "no such state");
}

async fn outcomes_settle_retry_and_dead_and_operators_revive_and_replay_with_the_same_id(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let ids = store.insert_events((0..3).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let claimed = claim(&store, "h", 10, now).await;
    assert_eq!(claimed.len(), 3);
    let later = now + 60_000;
    let of = |i: usize| claimed.iter().find(|d| d.event_id == ids[i].id).unwrap();
    let records = vec![outcome(of(0), Next::Done), outcome(of(1), Next::RetryAt(later)), outcome(of(2), Next::Dead)];
    store.finish_attempts(records).await.unwrap();
    let state = |id| store.deliveries().unwrap().into_iter().find(|d| d.event_id == id).unwrap();
    assert_eq!([state(ids[0].id).state, state(ids[1].id).state, state(ids[2].id).state], ["done", "pending", "dead"]);
    assert!(claim(&store, "h", 10, now).await.is_empty(), "a retry waits for its time");
    assert_eq!(claim(&store, "h", 10, later).await.len(), 1, "and is due then");
    let dead = store.list_deliveries(&DeliveryFilter { state: Some("dead".into()), limit: 10, ..Default::default() });
    assert_eq!(dead.unwrap().len(), 1);
    let history = store.event_deliveries(ids[2].id).unwrap();
    assert_eq!((history.len(), history[0].1.len()), (1, 1), "one delivery with its one attempt");
    assert_eq!(history[0].1[0].outcome, "dead");

    assert_eq!(store.retry_dead(Some("other")).unwrap(), 0);
    assert_eq!(store.retry_dead(Some("h")).unwrap(), 1);
    assert_eq!(state(ids[2].id).state, "pending");
    let original = state(ids[0].id).webhook_id;
    assert_eq!(store.replay(ids[0].id, None).unwrap(), ["h"]);
    let replayed: Vec<String> = store
        .deliveries()
        .unwrap()
        .into_iter()
        .filter(|d| d.event_id == ids[0].id && d.state == "pending")
        .map(|d| d.webhook_id)
        .collect();
    assert_eq!(replayed, [original], "a replay keeps the webhook id");
}

async fn a_paused_handler_gets_nothing_claimed_and_its_breaker_probes(backend: Backend) {
    let (store, _guard) = open(backend).await;
    store.insert_events((0..3).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    assert_eq!(store.pause_handler("h", Some("receiver moved")).unwrap(), None);
    assert_eq!(store.pause_handler("h", None).unwrap().as_deref(), Some("operator"), "who paused it before");
    let now = vod_eventd::store::now_ms();
    let want = Want::new("h".into(), 10, Duration::from_secs(30));
    let claimed = store.settle_and_claim(Arc::from([]), vec![want.clone()], now).await.unwrap();
    assert!(claimed.deliveries.is_empty());
    assert_eq!(claimed.paused.get(&0).map(String::as_str), Some("operator"));
    let overview = store.handler_overview(&to(&["h"])).unwrap();
    assert_eq!((overview[0].state.as_str(), overview[0].pending), ("paused", 3));
    assert!(store.resume_handler("h").unwrap().is_some());
    assert_eq!(store.resume_handler("h").unwrap(), None, "not paused any more");

    // The breaker trips: nothing is claimed until the probe is due, then one delivery.
    let probe = Duration::from_secs(10);
    let trip = Want {
        probe_interval: probe,
        breaker: Some(BreakerStep::Trip { reason: "5 failures".into(), alert: None }),
        ..want.clone()
    };
    let claimed = store.settle_and_claim(Arc::from([]), vec![trip], now).await.unwrap();
    assert!(claimed.deliveries.is_empty());
    assert_eq!(claimed.paused.get(&0).map(String::as_str), Some("breaker"));
    let probing = Want { probe_interval: probe, ..want.clone() };
    let early = store.settle_and_claim(Arc::from([]), vec![probing.clone()], now + 1_000).await.unwrap();
    assert!(early.deliveries.is_empty(), "no probe before probe_interval");
    let due = store.settle_and_claim(Arc::from([]), vec![probing], now + 11_000).await.unwrap();
    assert_eq!(due.deliveries.len(), 1, "one probe");
    let recovered = Want { breaker: Some(BreakerStep::Recovered { alert: None }), ..want };
    let claimed = store.settle_and_claim(Arc::from([]), vec![recovered], now + 12_000).await.unwrap();
    assert!(claimed.paused.is_empty(), "a success resumes it");
    assert_eq!(claimed.deliveries.len(), 2);
}

async fn ranges_run_in_batches_and_resume_after_their_cursor(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let n = vod_eventd::store::RANGE_BATCH as usize + 20;
    store.insert_events((0..n).map(|i| (upload(i), vec![])).collect()).await.unwrap();
    let range = Range::Replay { event_type: None, file_id: None, source: None, handler: "h".into() };
    let (since, until) = (0, vod_eventd::store::now_ms() + 1);
    assert_eq!(store.range_count(&range, 0, since, until).unwrap(), n as i64);
    assert!(store.range_job(&range, "args").unwrap().is_none());
    let job = store.start_range_job(&range, "args", since, until).unwrap();
    assert_eq!((job.total, job.done), (n as i64, 0));
    let job = store.range_batch(&job, &range).unwrap();
    assert_eq!(job.done, vod_eventd::store::RANGE_BATCH);
    assert!(job.finished_at.is_none());
    // Picked up again (a new process): the cursor is stored.
    let job = store.range_job(&range, "args").unwrap().unwrap();
    assert_eq!(store.range_count(&range, job.cursor, since, until).unwrap(), 20);
    let job = store.range_batch(&job, &range).unwrap();
    assert_eq!(job.done, n as i64);
    let job = store.range_batch(&job, &range).unwrap();
    assert!(job.finished_at.is_some());
    assert_eq!(store.deliveries().unwrap().len(), n, "each event replayed once");

    let retry = Range::Retry { state: "dead".into(), handler: Some("h".into()) };
    assert_eq!(store.range_count(&retry, 0, since, until + 60_000).unwrap(), 0, "none is dead");
    let pending = Range::Retry { state: "pending".into(), handler: Some("h".into()) };
    assert_eq!(store.range_count(&pending, 0, since, until + 60_000).unwrap(), n as i64, "by state and window");
}

async fn alerts_are_routed_once_a_minute_per_kind_and_subject(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let alert = || Alert::new(AlertKind::PullsStale, "main", "no pull for 10 min");
    assert!(store.raise_alert(alert(), route_to(&["pager"])).await.unwrap());
    assert!(!store.raise_alert(alert(), route_to(&["pager"])).await.unwrap(), "held back within the minute");
    let other = Alert::new(AlertKind::PullsStale, "second", "no pull for 10 min");
    assert!(store.raise_alert(other, route_to(&["pager"])).await.unwrap(), "another subject");
    assert!(!store.raise_alert(alert(), route_to(&[])).await.unwrap(), "no route takes it");
    let events = store.list_events(&EventFilter { source: Some("vod-eventd".into()), limit: 10, ..Default::default() });
    assert_eq!(events.unwrap().len(), 2);

    // Dead deliveries raise one alert per handler.
    store.insert_events((0..2).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let claimed = claim(&store, "h", 10, now).await;
    store.finish_attempts(claimed.iter().map(|d| outcome(d, Next::Dead)).collect()).await.unwrap();
    let dead = store.dead_since(now - 1_000, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let ids = dead.iter().map(|(id, _)| *id).collect();
    assert_eq!(store.raise_alerts_for_dead(ids, route_to(&["pager"])).await.unwrap(), 1);
}

async fn keys_are_stored_once_and_never_listed_with_their_material(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let event = store.insert_events(vec![(upload(1), vec![])]).await.unwrap()[0].id;
    let key = |edk: &str, dk: u8| NewKey {
        edk: edk.into(),
        dk: [dk; 16],
        file_id: Some("f1".into()),
        key_source: Some("VodBuildInKMS".into()),
        definition: Some(12),
        event_id: event,
        sealed: None,
    };
    assert_eq!(store.insert_keys(vec![key("e1", 1), key("e2", 2)]).await.unwrap(), 2);
    assert_eq!(store.insert_keys(vec![key("e1", 9)]).await.unwrap(), 0, "an EDK is stored once");
    assert_eq!(store.get_key("e1").unwrap(), Some(vec![1; 16]), "the first key is kept");
    assert_eq!(store.get_key("none").unwrap(), None);
    let mut known = store.known_edks(to(&["e2", "e3"])).await.unwrap();
    known.sort();
    assert_eq!(known, ["e2"]);
    let listed = store.list_keys(Some("f1"), 10).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(!format!("{listed:?}").contains("[1, 1, 1"), "no key material in listings");
    assert!(store.list_keys(Some("f2"), 10).unwrap().is_empty());
}

/// A key ring from `(id, byte)` pairs: each key 32 times that byte, the first sealing.
fn ring(keys: &[(&str, u8)]) -> vod_eventd::store::keyring::KeyRing {
    use base64::Engine as _;
    let text: String = keys
        .iter()
        .map(|(id, b)| format!("{id}:{}\n", base64::engine::general_purpose::STANDARD.encode([*b; 32])))
        .collect();
    vod_eventd::store::keyring::KeyRing::parse(&text).unwrap()
}

/// Encryption at rest: through a handle with a key ring, keys are stored sealed (the bytes
/// in the database hold no key, and SQLite's file neither), read back opened; a key stored
/// before encryption stays readable; `rekey` seals every key under the ring's first key,
/// after which the old key is no longer needed; a handle without the right key is refused,
/// with no key in the error.
async fn keys_are_sealed_at_rest_old_ones_stay_readable_and_rekey_rotates(backend: Backend) {
    use vod_eventd::store::keyring::{sealed_under, OpenError};
    let (plain, guard) = open(backend).await;
    let event = plain.insert_events(vec![(upload(1), vec![])]).await.unwrap()[0].id;
    // Distinctive keys, easy to find in raw bytes.
    let dk = |n: u8| -> [u8; 16] { std::array::from_fn(|i| n.wrapping_mul(31).wrapping_add(i as u8 * 7) ^ 0xa5) };
    let key = |edk: &str, n: u8| NewKey {
        edk: edk.into(),
        dk: dk(n),
        file_id: Some("f1".into()),
        key_source: Some("VodBuildInKMS".into()),
        definition: None,
        event_id: event,
        sealed: None,
    };
    // e0 stored before encryption was turned on.
    plain.insert_keys(vec![key("e0", 0)]).await.unwrap();
    let sealed = plain.clone().with_keyring(Some(ring(&[("k1", 1)])));
    assert_eq!(sealed.insert_keys(vec![key("e1", 1), key("e2", 2)]).await.unwrap(), 2);

    let raw = plain.stored_keys(String::new(), 10).await.unwrap();
    assert_eq!(raw.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(), ["e0", "e1", "e2"]);
    assert_eq!(raw[0].1, dk(0), "stored before encryption: as it was");
    for (n, (_, bytes)) in raw.iter().enumerate().skip(1) {
        assert_eq!(sealed_under(bytes).unwrap().as_deref(), Some("k1"));
        assert!(!bytes.windows(16).any(|w| w == dk(n as u8)), "the stored bytes hold no key");
    }
    if let Some(dir) = &guard {
        // SQLite: nowhere in the database file or its WAL.
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        assert!(bytes.windows(16).any(|w| w == dk(0)), "the check finds a plain key");
        for n in [1, 2] {
            assert!(!bytes.windows(16).any(|w| w == dk(n)), "a sealed key is nowhere in the files");
        }
    }
    // Read back opened, the old plain key too, by either read.
    for n in 0..3u8 {
        let edk = format!("e{n}");
        assert_eq!(sealed.get_key(&edk).unwrap(), Some(dk(n).to_vec()));
        assert_eq!(sealed.key_for("f1".into(), edk).await.unwrap(), Some(dk(n).to_vec()));
    }
    // No ring: a sealed key is refused, naming its key id and no key.
    match plain.get_key("e1") {
        Err(StoreError::Sealed(OpenError::NoKeyRing(id))) => assert_eq!(id, "k1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(plain.get_key("e0").unwrap(), Some(dk(0).to_vec()));

    // Rotation: k2 first, k1 still there to open; rekey seals everything under k2.
    let rotating = plain.clone().with_keyring(Some(ring(&[("k2", 2), ("k1", 1)])));
    assert_eq!(rotating.rekey().await.unwrap(), (3, 0), "e0 sealed, e1 and e2 sealed again");
    assert_eq!(rotating.rekey().await.unwrap(), (0, 3), "nothing left to do");
    for (_, bytes) in plain.stored_keys(String::new(), 10).await.unwrap() {
        assert_eq!(sealed_under(&bytes).unwrap().as_deref(), Some("k2"));
    }
    let rotated = plain.clone().with_keyring(Some(ring(&[("k2", 2)])));
    for n in 0..3u8 {
        assert_eq!(rotated.get_key(&format!("e{n}")).unwrap(), Some(dk(n).to_vec()), "k1 no longer needed");
    }
    let error = sealed.get_key("e1").unwrap_err();
    assert!(matches!(error, StoreError::Sealed(OpenError::UnknownId(ref id)) if id == "k2"), "{error}");
    // A key under the right id but another value does not open, and says so.
    let wrong = plain.clone().with_keyring(Some(ring(&[("k2", 9)])));
    assert!(matches!(wrong.get_key("e1"), Err(StoreError::Sealed(OpenError::Damaged(_)))));
    assert!(!format!("{error} {error:?}").contains(&format!("{:?}", dk(1))));
}

async fn a_key_is_served_only_for_the_file_its_row_names(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let event = store.insert_events(vec![(upload(1), vec![])]).await.unwrap()[0].id;
    let key = |edk: &str, file: Option<&str>, dk: u8| NewKey {
        edk: edk.into(),
        dk: [dk; 16],
        file_id: file.map(String::from),
        key_source: Some("VodBuildInKMS".into()),
        definition: None,
        event_id: event,
        sealed: None,
    };
    store.insert_keys(vec![key("e1", Some("f1"), 1), key("e2", Some("f2"), 2), key("e3", None, 3)]).await.unwrap();
    let key_for = |file: &str, edk: &str| store.key_for(file.into(), edk.into());
    assert_eq!(key_for("f1", "e1").await.unwrap(), Some(vec![1; 16]));
    assert_eq!(key_for("f2", "e2").await.unwrap(), Some(vec![2; 16]));
    assert_eq!(key_for("f1", "e2").await.unwrap(), None, "another file's EDK is not this file's key");
    assert_eq!(key_for("f2", "e1").await.unwrap(), None);
    assert_eq!(key_for("f1", "none").await.unwrap(), None, "an unknown EDK");
    assert_eq!(key_for("", "e3").await.unwrap(), None, "a key stored without a file is served for none");
    assert_eq!(key_for("F1", "e1").await.unwrap(), None, "file ids compare exactly");
}

async fn retention_keeps_events_with_work_left_and_orphans_are_counted_apart(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let ids = store.insert_events((0..4).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    store.insert_events(vec![(upload(9), vec![])]).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let claimed = claim(&store, "h", 2, now).await;
    store.finish_attempts(vec![outcome(&claimed[0], Next::Done), outcome(&claimed[1], Next::Dead)]).await.unwrap();
    let counts = store.handler_counts().await.unwrap();
    assert_eq!((counts["h"].pending, counts["h"].dead), (2, 1));

    let stop = tokio_util::sync::CancellationToken::new();
    let pause = Duration::from_millis(1);
    // One done, one without deliveries: gone. Dead and pending: kept.
    assert_eq!(store.prune(now + 1_000, false, pause, &stop).await.unwrap(), 2);
    assert_eq!(store.count_events().unwrap(), 3);
    assert_eq!(store.prune(now + 1_000, true, pause, &stop).await.unwrap(), 1, "with include_dead");
    assert!(store.oldest_event_ms().unwrap().is_some());

    // The handler goes away while one attempt is in flight: its pending deliveries are
    // orphaned (the one in flight is counted apart), then kept only until retention.
    assert_eq!(claim(&store, "h", 1, vod_eventd::store::now_ms()).await.len(), 1);
    let orphans = store.sync_orphans(to(&["other"]), "/etc/vod-eventd/config.toml".into()).await.unwrap();
    assert_eq!((orphans.orphaned.get("h"), orphans.in_flight.get("h")), (Some(&1), Some(&1)));
    let counts = store.handler_counts().await.unwrap();
    assert_eq!((counts["h"].pending, counts["h"].orphaned), (0, 2));
    assert!(counts["h"].orphaned_reason.as_deref().unwrap().contains("no handler named `h`"));
    let back = store.sync_orphans(to(&["h"]), "c".into()).await.unwrap();
    assert_eq!(back.resumed.get("h"), Some(&2));
    store.sync_orphans(vec![], "c".into()).await.unwrap();
    assert_eq!(store.prune(now + 1_000, false, pause, &stop).await.unwrap(), 2);
    assert_eq!(store.count_events().unwrap(), 0);
    assert!(ids.iter().all(|i| store.get_event(i.id).unwrap().is_none()));
}

async fn state_credentials_activity_and_size(backend: Backend) {
    let (store, _guard) = open(backend).await;
    store.put_state(vec![("heartbeat_ms".into(), "1".into()), ("pid".into(), "7".into())]).await.unwrap();
    store.put_state(vec![("heartbeat_ms".into(), "2".into())]).await.unwrap();
    let state = store.state().unwrap();
    assert_eq!((state["heartbeat_ms"].as_str(), state["pid"].as_str()), ("2", "7"));
    assert!(!store.credentials_worked("fp".into()).await.unwrap());
    store.remember_credentials("fp".into()).await.unwrap();
    store.remember_credentials("fp".into()).await.unwrap();
    assert!(store.credentials_worked("fp".into()).await.unwrap());

    store.insert_events((0..3).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    let now = vod_eventd::store::now_ms();
    let hourly = store.events_per_hour(now + 1).unwrap();
    assert_eq!(hourly[vod_eventd::store::HOURS - 1], 3);
    let claimed = claim(&store, "h", 1, vod_eventd::store::now_ms()).await;
    store.finish_attempt(outcome(&claimed[0], Next::RetryAt(now))).await.unwrap();
    let later = vod_eventd::store::now_ms() + 1_000;
    assert_eq!(store.failures_per_hour(later).unwrap()["h"][vod_eventd::store::HOURS - 1], 1);
    assert_eq!(store.events_by_type_since(0).unwrap(), [("NewFileUpload".to_string(), 3)]);

    assert!(store.size_on_disk().await > 0, "a store takes room");
    store.check_integrity().unwrap();
    assert!(store.lead(Singleton::Retention).await, "a lone store leads");
    assert!(store.leading().await.contains(&Singleton::Retention), "and says it leads what it took");
    assert_eq!(store.is_shared(), backend == Backend::Postgres);
}

/// The size cap: once the store is at `store.max_size_mb`, new events are refused as on a
/// full disk (nothing half-stored), confirmations still go through, and raising the cap
/// lets ingest go on.
async fn a_full_store_refuses_new_events_until_the_cap_is_raised(backend: Backend) {
    let (store, _guard) = open(backend).await;
    let big = |i: usize| ev(&format!(r#"{{"eventType":"X","data":{{"n":{i},"pad":"{}"}}}}"#, "x".repeat(4096)));
    let first = store.insert_events(vec![(big(0), to(&["h"]))]).await.unwrap()[0];
    store.set_max_size(1).await.unwrap();
    let mut refused = None;
    for i in 1..200 {
        match store.insert_events(vec![(big(i), to(&["h"]))]).await {
            Ok(_) => continue,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the cap is reached");
    assert!(
        matches!(refused, StoreError::Full(_)) || refused.to_string().contains("full"),
        "refused as a full store: {refused}"
    );
    let before = store.count_events().unwrap();
    store.ingest(Vec::new(), vec![(first.id, 1)]).await.unwrap();
    store.set_max_size(0).await.unwrap();
    store.insert_events(vec![(big(1000), vec![])]).await.unwrap();
    assert_eq!(store.count_events().unwrap(), before + 1);
}

both_stores!(a_full_store_refuses_new_events_until_the_cap_is_raised);

both_stores!(a_copy_to_another_store_keeps_every_id_and_webhook_id);

/// `store copy` from this backend into a new SQLite store: the same events, deliveries,
/// attempts and keys under the same ids, so webhook ids and references stay valid, and the
/// copy takes new writes under fresh ids.
async fn a_copy_to_another_store_keeps_every_id_and_webhook_id(backend: Backend) {
    use vod_eventd::store::copy::{copy, End};
    let (store, _guard, spec) = open_spec(backend).await;
    let rows = store.insert_events((0..30).map(|i| (upload(i), to(&["h"]))).collect()).await.unwrap();
    let claimed = claim(&store, "h", 5, vod_eventd::store::now_ms()).await;
    store.finish_attempts(claimed.iter().map(|d| outcome(d, Next::Done)).collect()).await.unwrap();
    let key = NewKey {
        edk: "e1".into(),
        dk: [3; 16],
        file_id: Some("f1".into()),
        key_source: None,
        definition: None,
        event_id: rows[1].id,
        sealed: None,
    };
    store.insert_keys(vec![key]).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("copy.db").display().to_string();
    let (from, to) = (End::open(&spec, None, false).await.unwrap(), End::open(&target, None, true).await.unwrap());
    let counted = copy(&from, &to, 7, &mut |_, _| {}).await.unwrap();
    assert!(counted.iter().all(|c| c.source == c.destination), "every table copied whole");
    drop((from, to));
    let copied = Store::open_existing(std::path::Path::new(&target), Duration::from_secs(5)).unwrap();
    assert_eq!(copied.deliveries().unwrap(), store.deliveries().unwrap());
    assert_eq!(copied.attempts().unwrap(), store.attempts().unwrap());
    let all = EventFilter { limit: 100, ..Default::default() };
    let ids = |s: &Store| s.list_events(&all).unwrap().into_iter().map(|e| (e.id, e.dedupe_key)).collect::<Vec<_>>();
    assert_eq!(ids(&copied), ids(&store));
    assert_eq!(copied.get_key("e1").unwrap(), Some(vec![3; 16]));
    let next = copied.insert_events(vec![(upload(99), vec![])]).await.unwrap()[0];
    assert!(next.new && next.id > store.max_event_id().unwrap(), "new rows get fresh ids");
}
