//! An in-process emulator of Tencent Cloud VOD's reliable-callback queue, for both APIs,
//! faithful enough to test a consumer against. v2 (`/v2/index.php`): signature checks
//! (HmacSHA1/HmacSHA256, GET/POST), stale Timestamps and reused Nonces (4500), 1000
//! calls/min per action (4400). API 3.0 (POST `/` with `X-TC-Action`): TC3-HMAC-SHA256
//! verification, 5-minute timestamp skew, 100 requests/s per action. Both share one queue
//! per app (`SubAppId`; none is the default app): a handle is only valid under the app it
//! was pulled from, so confirming it under another is refused as an invalid handle (and
//! counted in `cross_app_confirms`). DescribeSubAppIds (API 3.0) lists the apps, field for
//! field as the official SDK's `SubAppIdInfo`. Each queue has
//! a long-poll hold that wakes on enqueue, up to 16 events per pull under fresh handles,
//! a visibility timeout with redelivery under a new handle, strict confirms (any bad handle
//! refuses the call, nothing confirmed), DescribeDrmDataKey for the EDKs it issued, and
//! injected faults. Each app has an event configuration (DescribeEventConfig /
//! ModifyEventConfig): an app in PUSH mode pulls nothing, and event types switched off are
//! never queued. Control endpoints under `/_emulator/` enqueue, generate and report.
//!
//! # Layout
//! - [`queue`]: the queue rules, pure and time-injected.
//! - [`generate`]: realistic events of every v2 type.
//! - `auth`: signature, Timestamp, Nonce and rate-limit checks.
//! - `server`: the HTTP server, the v2 actions and the control endpoints.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
pub mod event_config;
pub mod generate;
pub mod queue;
mod server;
mod v3;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use crate::event_config::EventConfig;
pub use crate::generate::Api;
use crate::queue::{Queue, QueueStats};

/// One accepted API credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    /// The `SecretId`.
    pub secret_id: String,
    /// The secret key that signs for it.
    pub secret_key: String,
}

/// How an empty long poll is answered. The service's own idle answer is an error: v2
/// `code 4000` (what Tencent's own demo expects), v3 `Response.Error.Code =
/// "ResourceNotFound"` (in the official Go SDK's PullEvents error list; consumers built on the
/// official Java SDK map it to an empty `EventSet`). A success with no, an empty or a null
/// list is possible too and must be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EmptyResponse {
    /// v2 `{"code": 4000, ...}`; v3 `{"Response": {"Error": {"Code": "ResourceNotFound", ...}}}`.
    #[default]
    #[serde(alias = "code4000")]
    Idle,
    /// v2 `{"code": 0, "eventList": []}`; v3 `"EventSet": []`.
    EmptyList,
    /// v2 `{"code": 0}` without `eventList`; v3 without `EventSet`.
    MissingList,
    /// v2 `"eventList": null`; v3 `"EventSet": null`.
    NullList,
    /// Each of the above in turn.
    Rotate,
}

/// A kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// HTTP 500 with an HTML body.
    Http500,
    /// HTTP 200 with a body that is not JSON.
    NotJson,
    /// HTTP 200 with JSON of the wrong shape.
    WrongShape,
    /// `code 6000` (internal error).
    Code6000,
    /// No answer until `hang_for` has passed (past the client's timeout).
    Hang,
    /// The connection is dropped without an answer.
    Reset,
    /// The action's real answer under HTTP 502 (asked for by name, not in [`FaultKind::ALL`]).
    WrongStatus,
    /// The action's real answer in a shape a generic envelope parse refuses: v2 with
    /// `"code":"0"`, v3 with `Response` as a JSON string (asked for by name).
    MangledEnvelope,
}

impl FaultKind {
    /// Every kind that replaces the answer (the two that mangle the real one are asked for by name).
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Http500,
        FaultKind::NotJson,
        FaultKind::WrongShape,
        FaultKind::Code6000,
        FaultKind::Hang,
        FaultKind::Reset,
    ];
}

/// Fault injection settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Probability, 0.0 to 1.0, that an API call gets a fault.
    pub rate: f64,
    /// The kinds to choose from, uniformly.
    pub kinds: Vec<FaultKind>,
    /// How long a `hang` fault holds the request.
    #[serde(with = "millis")]
    pub hang_for: Duration,
    /// Apply faults to these actions only (empty: all).
    pub actions: Vec<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { rate: 0.0, kinds: FaultKind::ALL.to_vec(), hang_for: Duration::from_secs(15), actions: Vec::new() }
    }
}

/// Emulator settings; the defaults are Tencent's documented values.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Accepted credentials.
    pub credentials: Vec<Credential>,
    /// How long an empty PullEvent is held (Tencent: up to 5 s).
    pub hold: Duration,
    /// How long a handle stays valid before its event is redelivered (Tencent: 30 s).
    pub visibility: Duration,
    /// Events per pull (16).
    pub max_batch: usize,
    /// Calls per minute per action before 4400 (1000); `None` turns the limit off.
    pub rate_limit_per_minute: Option<u32>,
    /// How far a request's Timestamp may be from the emulator's clock (2 h).
    pub max_clock_skew: Duration,
    /// How an empty long poll is answered.
    pub empty_response: EmptyResponse,
    /// Injected faults.
    pub faults: Faults,
    /// Which API's event shapes `generate` makes.
    pub api: Api,
    /// The account's apps: a v2 call naming another `SubAppId` is refused at once with
    /// 4000 (`None`: any `SubAppId` is accepted).
    pub sub_app_ids: Option<Vec<u64>>,
    /// Every app's event configuration until ModifyEventConfig (or
    /// [`EmulatorHandle::set_event_config`]) changes it; default `PULL` with every switch on.
    pub event_config: EventConfig,
    /// API 3.0 actions these credentials may not call, with the error code to answer
    /// (as a CAM policy without that action would).
    pub denied_actions: HashMap<String, String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            credentials: vec![Credential { secret_id: DEMO_SECRET_ID.into(), secret_key: DEMO_SECRET_KEY.into() }],
            hold: Duration::from_secs(5),
            visibility: Duration::from_secs(30),
            max_batch: 16,
            rate_limit_per_minute: Some(1000),
            max_clock_skew: Duration::from_secs(2 * 3600),
            empty_response: EmptyResponse::Idle,
            faults: Faults::default(),
            api: Api::V2,
            sub_app_ids: None,
            event_config: EventConfig::pull_all_on(),
            denied_actions: HashMap::new(),
        }
    }
}

/// The SecretId the emulator accepts by default (for demos and tests only).
pub const DEMO_SECRET_ID: &str = "AKIDemulatorDEMOsecretID0000000000000";
/// The secret key of [`DEMO_SECRET_ID`].
pub const DEMO_SECRET_KEY: &str = "emulator-demo-secret-key-not-a-real-one";

/// API-level counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ApiStats {
    /// Calls per action that passed authentication.
    pub calls: HashMap<String, u64>,
    /// Calls refused with 4100.
    pub auth_failures: u64,
    /// Calls refused with 4500.
    pub replays: u64,
    /// Calls refused with 4400.
    pub rate_limited: u64,
    /// Faults injected.
    pub faults: u64,
    /// Events not queued because the default app is in PUSH mode or their switch is off.
    pub not_queued: u64,
    /// Handles refused because they were confirmed under another app than the one that
    /// pulled them.
    pub cross_app_confirms: u64,
}

/// One app (sub-application) of the account, as DescribeSubAppIds describes it: the
/// official SDK's `SubAppIdInfo` (`SubAppId`, `SubAppIdName`, `Description`, `CreateTime`,
/// `Status`, the deprecated `Name`, `Mode`, `StorageRegions`, `Tags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// `SubAppId`.
    pub sub_app_id: u64,
    /// `SubAppIdName` (also sent as the deprecated `Name`).
    pub name: String,
    /// `Description`.
    pub description: String,
    /// `CreateTime`, ISO 8601.
    pub create_time: String,
    /// `Status`: `On`, `Off`, `Destroying` or `Destroyed`.
    pub status: String,
    /// `Tags` as (`TagKey`, `TagValue`).
    pub tags: Vec<(String, String)>,
}

impl App {
    /// An enabled app with a name and no tags.
    pub fn new(sub_app_id: u64, name: impl Into<String>) -> App {
        App {
            sub_app_id,
            name: name.into(),
            description: String::new(),
            create_time: "2024-01-01T00:00:00Z".into(),
            status: "On".into(),
            tags: Vec::new(),
        }
    }
}

/// Everything `/_emulator/stats` reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Queue counters.
    #[serde(flatten)]
    pub queue: QueueStats,
    /// API counters.
    pub api: ApiStats,
}

pub(crate) struct Shared {
    pub(crate) config: Mutex<EmulatorConfig>,
    /// One queue per app (`None`: the default app, called without `SubAppId`).
    pub(crate) queues: Mutex<HashMap<Option<u64>, Queue>>,
    /// The account's apps, for DescribeSubAppIds and the `sub_app_ids` check.
    pub(crate) apps: Mutex<BTreeMap<u64, App>>,
    pub(crate) enqueued: Notify,
    pub(crate) keys: Mutex<HashMap<String, [u8; 16]>>,
    pub(crate) guard: Mutex<auth::Guard>,
    pub(crate) api: Mutex<ApiStats>,
    pub(crate) generated: AtomicU64,
    pub(crate) webhooks: Mutex<Vec<ReceivedWebhook>>,
    pub(crate) webhooks_received: AtomicU64,
    /// Where this emulator serves media (`http://<addr>/_media`).
    pub(crate) media_base: String,
    /// Playlists served under `media_base`, by path.
    pub(crate) media: Mutex<HashMap<String, String>>,
    /// Media requests still to answer with 503.
    pub(crate) media_failures: AtomicU64,
    /// Media requests received.
    pub(crate) media_requests: AtomicU64,
    /// Event configurations changed from `EmulatorConfig::event_config`, by `SubAppId`
    /// (`None`: the default app).
    pub(crate) event_configs: Mutex<HashMap<Option<u64>, EventConfig>>,
}

impl Shared {
    /// Runs `f` on an app's queue (made on first use).
    pub(crate) fn with_queue<T>(&self, app: Option<u64>, f: impl FnOnce(&mut Queue) -> T) -> T {
        let (visibility, max_batch) = {
            let config = self.config.lock().unwrap();
            (config.visibility, config.max_batch)
        };
        let mut queues = self.queues.lock().unwrap();
        f(queues.entry(app).or_insert_with(|| Queue::new(visibility, max_batch)))
    }

    /// Confirms handles under `app`. A handle another app's queue holds is refused like any
    /// invalid handle, and counted in `cross_app_confirms`.
    pub(crate) fn confirm(&self, app: Option<u64>, handles: &[String]) -> Result<(), queue::ConfirmRefused> {
        let result = self.with_queue(app, |q| q.confirm(std::time::Instant::now(), handles));
        if result.is_err() {
            let queues = self.queues.lock().unwrap();
            let cross = handles.iter().filter(|h| queues.iter().any(|(a, q)| *a != app && q.holds(h))).count();
            drop(queues);
            self.api.lock().unwrap().cross_app_confirms += cross as u64;
        }
        result
    }

    /// False when the emulator knows the account's apps (`sub_app_ids`) and `id` is none of them.
    pub(crate) fn known_app(&self, id: u64) -> bool {
        self.config.lock().unwrap().sub_app_ids.is_none() || self.apps.lock().unwrap().contains_key(&id)
    }

    /// An app's event configuration (`None`: the default app).
    pub(crate) fn event_config(&self, app: Option<u64>) -> EventConfig {
        let changed = self.event_configs.lock().unwrap().get(&app).cloned();
        changed.unwrap_or_else(|| self.config.lock().unwrap().event_config.clone())
    }
}

/// A webhook received at `/_emulator/webhook` (a sink to point a webhook handler at).
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedWebhook {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// `X-Vod-Event-Type`.
    pub event_type: String,
    /// The body.
    pub body: String,
    /// When it arrived, Unix ms.
    pub received_at_ms: i64,
}

/// The webhook sink keeps at most this many.
pub const MAX_WEBHOOKS_KEPT: usize = 10_000;

/// A cloneable handle on a running emulator's state.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
}

/// A running emulator; dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    handle: EmulatorHandle,
    task: JoinHandle<()>,
}

impl Emulator {
    /// Starts an emulator on `127.0.0.1` with a port chosen by the OS.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        Self::bind("127.0.0.1:0".parse().expect("valid"), config).await
    }

    /// Starts an emulator on `addr`.
    pub async fn bind(addr: SocketAddr, config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            queues: Mutex::new(HashMap::new()),
            apps: Mutex::new(
                config.sub_app_ids.iter().flatten().map(|&id| (id, App::new(id, format!("app {id}")))).collect(),
            ),
            config: Mutex::new(config),
            enqueued: Notify::new(),
            keys: Mutex::new(HashMap::new()),
            guard: Mutex::new(auth::Guard::default()),
            api: Mutex::new(ApiStats::default()),
            generated: AtomicU64::new(0),
            webhooks: Mutex::new(Vec::new()),
            webhooks_received: AtomicU64::new(0),
            media_base: format!("http://{addr}{}", server::MEDIA_PREFIX),
            media: Mutex::new(HashMap::new()),
            media_failures: AtomicU64::new(0),
            media_requests: AtomicU64::new(0),
            event_configs: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(Emulator { addr, handle: EmulatorHandle { shared }, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The v2 API endpoint URL (`http://ADDR/v2/index.php`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/v2/index.php", self.addr)
    }

    /// The API 3.0 endpoint URL (`http://ADDR/`).
    pub fn endpoint_v3(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The endpoint for the API this emulator generates events for.
    pub fn endpoint_for(&self, api: Api) -> String {
        match api {
            Api::V2 => self.endpoint(),
            Api::V3 => self.endpoint_v3(),
        }
    }

    /// A handle that outlives borrows of `self`.
    pub fn handle(&self) -> EmulatorHandle {
        self.handle.clone()
    }
}

impl std::ops::Deref for Emulator {
    type Target = EmulatorHandle;
    fn deref(&self) -> &EmulatorHandle {
        &self.handle
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EmulatorHandle {
    /// Enqueues one event given as its `eventContent` JSON text (kept byte for byte) in the
    /// default app's queue.
    pub fn enqueue(&self, content: impl Into<String>) {
        self.enqueue_to(None, content)
    }

    /// Enqueues one event in an app's queue (`None`: the default app).
    pub fn enqueue_to(&self, app: Option<u64>, content: impl Into<String>) {
        let content: String = content.into();
        if !self.queues(app, &content) {
            return;
        }
        self.shared.with_queue(app, |q| q.enqueue(Arc::from(content), std::time::Instant::now()));
        self.shared.enqueued.notify_waiters();
    }

    /// Enqueues `count` realistic events of every type in turn and returns the contents
    /// queued (types the default app's event configuration keeps out are left out).
    pub fn enqueue_generated(&self, count: usize) -> Vec<String> {
        self.enqueue_generated_to(None, count)
    }

    /// Like [`EmulatorHandle::enqueue_generated`], in an app's queue, with events of the
    /// API `api` (whatever the emulator's `api`).
    pub fn enqueue_generated_as(&self, app: Option<u64>, api: Api, count: usize) -> Vec<String> {
        let first = self.shared.generated.fetch_add(count as u64, Ordering::Relaxed);
        self.enqueue_with(app, count, |n| generate::generate(api, first + n as u64))
    }

    /// Like [`EmulatorHandle::enqueue_generated`], in an app's queue.
    pub fn enqueue_generated_to(&self, app: Option<u64>, count: usize) -> Vec<String> {
        self.enqueue_generated_as(app, self.api(), count)
    }

    /// Enqueues `count` realistic events of one template (e.g. `"ProcedureStateChanged"`).
    pub fn enqueue_generated_type(&self, name: &str, count: usize) -> Option<Vec<String>> {
        let api = self.api();
        generate::generate_type(api, name)?;
        Some(self.enqueue_with(None, count, |_| generate::generate_type(api, name).expect("checked")))
    }

    fn enqueue_with(&self, app: Option<u64>, count: usize, make: impl Fn(usize) -> generate::Generated) -> Vec<String> {
        let mut events: Vec<_> = (0..count).map(make).filter(|g| self.queues(app, &g.content)).collect();
        {
            let mut keys = self.shared.keys.lock().unwrap();
            events.iter().flat_map(|g| g.keys.iter()).for_each(|(edk, dk)| {
                keys.insert(edk.clone(), *dk);
            });
            let mut media = self.shared.media.lock().unwrap();
            for g in &mut events {
                for (path, text) in g.playlists.drain(..) {
                    media.insert(path, text);
                }
                g.content = g.content.replace(generate::MEDIA_BASE, &self.shared.media_base);
            }
        }
        let now = std::time::Instant::now();
        self.shared.with_queue(app, |queue| {
            for g in &events {
                queue.enqueue(Arc::from(g.content.as_str()), now);
            }
        });
        self.shared.enqueued.notify_waiters();
        events.into_iter().map(|g| g.content).collect()
    }

    /// Whether the app's event configuration lets this event into its queue (counted in
    /// `not_queued` when not).
    fn queues(&self, app: Option<u64>, content: &str) -> bool {
        let event_type = event_config::event_type(content).unwrap_or_default();
        let queued = self.event_config(app).queues(&event_type);
        if !queued {
            self.shared.api.lock().unwrap().not_queued += 1;
        }
        queued
    }

    /// An app's event configuration (`None`: the default app).
    pub fn event_config(&self, app: Option<u64>) -> EventConfig {
        self.shared.event_config(app)
    }

    /// Replaces an app's event configuration, as the console would.
    pub fn set_event_config(&self, app: Option<u64>, config: EventConfig) {
        self.shared.event_configs.lock().unwrap().insert(app, config);
    }

    /// Answers API 3.0 calls of `action` with the error `code` (a CAM policy without it),
    /// or lets them through again with `None`.
    pub fn deny_action(&self, action: &str, code: Option<&str>) {
        let denied = &mut self.shared.config.lock().unwrap().denied_actions;
        match code {
            Some(code) => denied.insert(action.to_string(), code.to_string()),
            None => denied.remove(action),
        };
    }

    /// Every `(edk, data key)` this emulator has issued (generated or added).
    pub fn issued_keys(&self) -> Vec<(String, [u8; 16])> {
        self.shared.keys.lock().unwrap().iter().map(|(edk, dk)| (edk.clone(), *dk)).collect()
    }

    /// Serves `text` at `path` (starting with `/`) under [`EmulatorHandle::media_url`].
    pub fn add_media(&self, path: &str, text: impl Into<String>) {
        self.shared.media.lock().unwrap().insert(path.to_string(), text.into());
    }

    /// The URL of media `path` (starting with `/`) on this emulator.
    pub fn media_url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.media_base)
    }

    /// Answers the next `n` media requests with HTTP 503.
    pub fn fail_media_requests(&self, n: u64) {
        self.shared.media_failures.store(n, Ordering::Relaxed);
    }

    /// Media requests received so far (including those answered 503).
    pub fn media_requests(&self) -> u64 {
        self.shared.media_requests.load(Ordering::Relaxed)
    }

    /// Which API's event shapes are generated.
    pub fn api(&self) -> Api {
        self.shared.config.lock().unwrap().api
    }

    /// Registers a data key for an EDK, as if Tencent's KMS had issued it.
    pub fn add_key(&self, edk: impl Into<String>, dk: [u8; 16]) {
        self.shared.keys.lock().unwrap().insert(edk.into(), dk);
    }

    /// The data key the emulator holds for `edk`.
    pub fn data_key(&self, edk: &str) -> Option<[u8; 16]> {
        self.shared.keys.lock().unwrap().get(edk).copied()
    }

    /// Current counters, the queues of every app added up.
    pub fn stats(&self) -> Stats {
        let mut queue = QueueStats::default();
        self.shared.queues.lock().unwrap().values().for_each(|q| queue.add(&q.stats()));
        Stats { queue, api: self.shared.api.lock().unwrap().clone() }
    }

    /// One app's queue counters (`None`: the default app).
    pub fn stats_for(&self, app: Option<u64>) -> QueueStats {
        self.shared.with_queue(app, |q| q.stats())
    }

    /// The content of every event confirmed so far, in every app.
    pub fn confirmed(&self) -> Vec<Arc<str>> {
        self.shared.queues.lock().unwrap().values().flat_map(|q| q.confirmed()).collect()
    }

    /// The content of every event confirmed so far in one app, in confirm order.
    pub fn confirmed_in(&self, app: Option<u64>) -> Vec<Arc<str>> {
        self.shared.with_queue(app, |q| q.confirmed())
    }

    /// For every confirmed event, the time from its enqueue to its confirm.
    pub fn enqueue_to_confirm(&self) -> Vec<Duration> {
        self.shared.queues.lock().unwrap().values().flat_map(|q| q.enqueue_to_confirm()).collect()
    }

    /// Adds (or replaces) an app of the account.
    pub fn add_app(&self, app: App) {
        self.shared.apps.lock().unwrap().insert(app.sub_app_id, app);
    }

    /// Changes an app's `Status` (`On`, `Off`, `Destroying`, `Destroyed`); false if unknown.
    pub fn set_app_status(&self, sub_app_id: u64, status: &str) -> bool {
        let mut apps = self.shared.apps.lock().unwrap();
        apps.get_mut(&sub_app_id).map(|a| a.status = status.to_string()).is_some()
    }

    /// The account's apps, by `SubAppId`.
    pub fn apps(&self) -> Vec<App> {
        self.shared.apps.lock().unwrap().values().cloned().collect()
    }

    /// Webhooks received at `/_emulator/webhook`, oldest first.
    pub fn webhooks(&self) -> Vec<ReceivedWebhook> {
        self.shared.webhooks.lock().unwrap().clone()
    }

    /// How many webhooks the sink has received in all (it keeps only the last
    /// [`MAX_WEBHOOKS_KEPT`]).
    pub fn webhook_count(&self) -> u64 {
        self.shared.webhooks_received.load(Ordering::Relaxed)
    }

    /// The URL of the webhook sink.
    pub fn webhook_sink_path() -> &'static str {
        "/_emulator/webhook"
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.config.lock().unwrap().faults = faults;
    }

    /// Replaces the accepted credentials (as when a key is disabled or rotated at Tencent).
    pub fn set_credentials(&self, credentials: Vec<Credential>) {
        self.shared.config.lock().unwrap().credentials = credentials;
    }

    /// Changes the visibility timeout for handles issued from now on.
    pub fn set_visibility(&self, visibility: Duration) {
        self.shared.config.lock().unwrap().visibility = visibility;
        self.shared.queues.lock().unwrap().values_mut().for_each(|q| q.set_visibility(visibility));
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
