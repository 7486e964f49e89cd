//! Missing keys fetched by `vod-eventd keyserver` (the real binary, over real sockets, on
//! real SQLite files and PostgreSQL, against the in-tree emulator, which counts the
//! DescribeDrmDataKey calls it answers): one call for twenty concurrent requests, the
//! bounded memory of refused pairs, `503` while Tencent is unreachable, API 3.0 EDKs read
//! from the file's playlists (a `+` in an EDK kept on both sides); and the DRM handler's
//! batching of concurrent deliveries.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use vod_eventd::config::ApiVersion;
use vod_eventd::event::ReceivedEvent;
use vod_eventd::keyserver::token::{mint, Scope};
use vod_eventd::store::Store;

use crate::support::{cli, config_text, emulator, fast_emulator_config, free_port, write_private, Backend};

const SECRET: &str = "keyfetch-token-secret-0123456789abcdefgh";
const FILE: &str = "5285890781763144364";
const OTHER_FILE: &str = "5285890781763144999";

/// A key server under test.
struct Running {
    _dir: tempfile::TempDir,
    log_path: PathBuf,
    base: String,
    metrics: String,
    _child: Child,
    store: Store,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The key URI's query for `file` and `edk` (percent-encoded), with a token for `file`.
    fn url(&self, file: &str, edk: &str) -> String {
        let token = mint(SECRET.as_bytes(), &Scope::Files(vec![file.into()]), chrono::Utc::now().timestamp() + 600);
        let edk = percent_encoding::utf8_percent_encode(edk, percent_encoding::NON_ALPHANUMERIC);
        format!("{}/vod/key?fileId={file}&keySource=VodBuildInKMS&edk={edk}&token={}", self.base, token.unwrap())
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(&self.metrics).await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.parse().unwrap())
    }
}

/// An empty store of `backend` in `dir`, and the `[store]` lines naming it.
async fn open_store(backend: Backend, dir: &std::path::Path) -> (Store, String) {
    match backend {
        Backend::Sqlite => (Store::open(&dir.join("events.db"), Duration::from_secs(5)).unwrap(), String::new()),
        Backend::Postgres => {
            let url = crate::pg::database().await;
            let config = vod_eventd::config::StoreConfig { url: Some(url.clone().into()), ..Default::default() };
            let store = tokio::task::spawn_blocking(move || Store::open_for_cli(&config)).await.unwrap().unwrap();
            (store, format!("url = \"{url}\"\n"))
        }
    }
}

/// Stores a v2 task-flow event of `file` whose `data.drm.edkList` is `edks`.
async fn store_v2_event(store: &Store, file: &str, edks: &[&str]) {
    let content = serde_json::json!({"version": "4.0", "eventType": "ProcedureStateChanged", "data": {
        "status": "FINISH", "fileId": file, "vodTaskId": format!("1400000-procedurev2-{}", edks.join("").len()),
        "drm": {"definition": 10, "keySource": "VodBuildInKMS", "getKeyUrl": "https://k.example/vod/key",
                "edkList": edks}}});
    let event = ReceivedEvent::from_content(&content.to_string(), ApiVersion::V2);
    store.insert_events(vec![(event, vec![])]).await.unwrap();
}

/// Starts `vod-eventd keyserver` on `store` (in `dir`), calling the API at `endpoint` with
/// `vod` added to `[vod]`, with `extra` after `[keyserver]`'s own lines and `sections` after
/// it; waits for `/healthz`.
async fn start(
    dir: tempfile::TempDir,
    (store, store_extra): (Store, String),
    endpoint: &str,
    vod: &str,
    extra: &str,
    sections: &str,
) -> Running {
    let (port, metrics_port) = (free_port(), free_port());
    let keyserver = format!(
        "{vod}[keyserver]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\npath = \"/vod/key\"\ntoken_secrets = [\"{SECRET}\"]\nrate_per_client = 0\n{extra}{sections}"
    );
    let config_path = dir.path().join("config.toml");
    write_private(&config_path, &config_text(&dir.path().join("events.db"), endpoint, &store_extra, &keyserver));
    let log_path = dir.path().join("keyserver.log");
    let child = Command::from(cli())
        .args(["keyserver", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "vod_eventd=trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vod-eventd keyserver");
    let running = Running {
        _dir: dir,
        log_path,
        base: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        _child: child,
        store,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reqwest::get(format!("{}/healthz", running.base)).await {
            Ok(r) if r.status() == 200 => break,
            _ => {
                assert!(Instant::now() < deadline, "the key server did not answer /healthz:\n{}", running.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    running
}

fn drm_calls(emu: &vod_emulator::Emulator) -> u64 {
    emu.stats().api.calls.get("DescribeDrmDataKey").copied().unwrap_or(0)
}

both_stores!(twenty_concurrent_requests_for_a_missing_key_make_one_call);

async fn twenty_concurrent_requests_for_a_missing_key_make_one_call(backend: Backend) {
    let emu = emulator(fast_emulator_config()).await;
    let edk = "CiAK+GVka2Zvci/maWxlLW9uZS0wMTIzNDU2Nzg5YWJjZA==";
    let stranger = "CiAKHGVka2Zvci1maWxlLXR3by0wMTIzNDU2Nzg5YWJjZGVm";
    emu.add_key(edk, [0x5a; 16]);
    emu.add_key(stranger, [0x6b; 16]);
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = open_store(backend, dir.path()).await;
    store_v2_event(&store, FILE, &[edk]).await;
    store_v2_event(&store, OTHER_FILE, &[stranger]).await;
    let ks = start(dir, (store, store_extra), &emu.endpoint(), "", "", "").await;

    let client = reqwest::Client::new();
    let requests = (0..20).map(|_| {
        let (client, url) = (client.clone(), ks.url(FILE, edk));
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        })
    });
    for answer in futures_util::future::join_all(requests).await {
        assert_eq!(answer.unwrap(), (200, vec![0x5a; 16]), "{}", ks.log());
    }
    assert_eq!(drm_calls(&emu), 1, "twenty requests, one DescribeDrmDataKey call");
    assert_eq!(ks.store.key_for(FILE.into(), edk.into()).await.unwrap(), Some(vec![0x5a; 16]), "stored");
    // Answered from the fetch, or (a request that came after the key was stored) from the store.
    let fetched = ks.metric("vod_eventd_keyserver_requests_total{outcome=\"fetched\"}").await;
    let served = ks.metric("vod_eventd_keyserver_requests_total{outcome=\"served\"}").await;
    assert!(fetched >= 1 && fetched + served == 20, "fetched {fetched}, served {served}");
    // Stored now: served without a call.
    assert_eq!(client.get(ks.url(FILE, edk)).send().await.unwrap().status(), 200);
    // Another file's EDK, even one Tencent would answer, is not fetched for this file.
    assert_eq!(client.get(ks.url(FILE, stranger)).send().await.unwrap().status(), 404);
    assert_eq!(drm_calls(&emu), 1);
    assert!(!ks.log().contains(edk), "no whole EDK in the log");
}

/// Concurrent misses for distinct EDKs leave in calls of up to ten: 20 EDKs of one file,
/// asked for at once, take a few calls, not 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_are_batched_ten_per_call() {
    let emu = emulator(fast_emulator_config()).await;
    let edks: Vec<String> = (0..20).map(|i| format!("CiAKHGVka2Zvci1iYXRjaGVkLTAxMjM0NTY3ODlh{i:02}")).collect();
    for (i, edk) in edks.iter().enumerate() {
        emu.add_key(edk.clone(), [i as u8; 16]);
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = open_store(Backend::Sqlite, dir.path()).await;
    store_v2_event(&store, FILE, &edks.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let ks = start(dir, (store, store_extra), &emu.endpoint(), "", "", "").await;
    let client = reqwest::Client::new();
    let requests = edks.iter().map(|edk| {
        let (client, url) = (client.clone(), ks.url(FILE, edk));
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await.unwrap().to_vec() })
    });
    for (i, answer) in futures_util::future::join_all(requests).await.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), vec![i as u8; 16]);
    }
    let calls = drm_calls(&emu);
    assert!((2..=6).contains(&calls), "20 concurrent misses took {calls} calls");
}

/// Pairs no event ties cost no call; EDKs Tencent refuses cost one call each, are
/// remembered, and the memory holds `refused_max` pairs at most (the oldest forgotten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pairs_are_remembered_within_their_bound() {
    let emu = emulator(fast_emulator_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = open_store(Backend::Sqlite, dir.path()).await;
    let bogus: Vec<String> = (0..6).map(|i| format!("Ym9ndXMtZWRrLW5vdC1pc3N1ZWQtYnktdGVuY2VudC0w{i}")).collect();
    let refs: Vec<&str> = bogus.iter().map(String::as_str).collect();
    store_v2_event(&store, FILE, &refs).await;
    let limits = "refused_max = 4\nrefused_ttl = \"1h\"\n";
    let ks = start(dir, (store, store_extra), &emu.endpoint(), "", limits, "").await;
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };

    // A flood of pairs no stored event ties: 404, and Tencent never asked.
    for i in 0..50 {
        assert_eq!(status(ks.url(FILE, &format!("dW50aWVkLXBhaXI{i}"))).await, 404);
    }
    assert_eq!(drm_calls(&emu), 0);
    // Tied but refused by Tencent: one call each, then remembered.
    for edk in &bogus {
        assert_eq!(status(ks.url(FILE, edk)).await, 404);
    }
    assert_eq!(drm_calls(&emu), 6);
    for edk in &bogus[2..] {
        for _ in 0..5 {
            assert_eq!(status(ks.url(FILE, edk)).await, 404);
        }
    }
    assert_eq!(drm_calls(&emu), 6, "remembered pairs cost no call");
    assert_eq!(ks.metric("vod_eventd_keyserver_refused_pairs").await, 4, "the memory is bounded");
    // The oldest was forgotten to keep the bound: asked again, once.
    assert_eq!(status(ks.url(FILE, &bogus[0])).await, 404);
    assert_eq!(drm_calls(&emu), 7);
}

/// Tencent unreachable: `503` with `Retry-After`; the pair is not remembered as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_unreachable_is_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = open_store(Backend::Sqlite, dir.path()).await;
    let edk = "CiAKHGVka2Zvci1maWxlLW9uZS0wMTIzNDU2Nzg5YWJjZGVm";
    store_v2_event(&store, FILE, &[edk]).await;
    // Nothing listens there.
    let down = format!("http://127.0.0.1:{}/v2/index.php", free_port());
    let ks = start(dir, (store, store_extra), &down, "", "", "").await;
    for _ in 0..2 {
        let r = reqwest::get(ks.url(FILE, edk)).await.unwrap();
        assert_eq!(r.status(), 503, "{}", ks.log());
        assert_eq!(r.headers()["retry-after"], "10");
    }
    assert_eq!(ks.metric("vod_eventd_keyserver_requests_total{outcome=\"fetch_unavailable\"}").await, 2);
    assert_eq!(ks.metric("vod_eventd_keyserver_refused_pairs").await, 0);
}

/// API 3.0: no event carries an EDK; the key server reads the playlists of the file's task
/// flow itself, with the DRM handler's settings, and fetches the key. The playlist carries
/// the EDK unescaped, `+` and all; the player's query has it percent-encoded: both name one
/// EDK, stored under the string the DRM handler would store it under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_keys_are_found_in_the_file_s_playlists() {
    let emu = emulator(vod_emulator::EmulatorConfig { api: vod_emulator::Api::V3, ..fast_emulator_config() }).await;
    let edk = "CiAK+GVka2Zvci/maWxlLXYzLS0wMTIzNDU2Nzg5YWJjZA==";
    emu.add_key(edk, [0x3c; 16]);
    emu.add_media(
        "/v3/v.f210.m3u8",
        format!("#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"https://k.example/vod/key?fileId={FILE}&keySource=VodBuildInKMS&edk={edk}\",IV=0x0\n#EXTINF:10,\ns0.ts\n#EXT-X-ENDLIST\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = open_store(Backend::Sqlite, dir.path()).await;
    let content = serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {
        "TaskId": "1-Procedure-v3key", "Status": "FINISH", "FileId": FILE,
        "MediaProcessResultSet": [{"Type": "Transcode", "TranscodeTask": {"Status": "SUCCESS",
            "Output": {"Url": emu.media_url("/v3/v.f210.m3u8"), "Definition": 210}}}]}});
    store
        .insert_events(vec![(ReceivedEvent::from_content(&content.to_string(), ApiVersion::V3), vec![])])
        .await
        .unwrap();
    let drm = "[handlers.keys]\ntype = \"drm\"\nallow_http = true\nallow_private = [\"127.0.0.1\"]\n";
    let ks = start(dir, (store, store_extra), &emu.endpoint_v3(), "api = \"v3\"\n", "", drm).await;

    let r = reqwest::get(ks.url(FILE, edk)).await.unwrap();
    assert_eq!(r.status(), 200, "{}", ks.log());
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![0x3c; 16]);
    assert_eq!(drm_calls(&emu), 1);
    assert_eq!(ks.store.known_edks(vec![edk.into()]).await.unwrap(), [edk], "stored under the EDK with its `+`");
    // The same EDK for another file: no event of that file names it.
    assert_eq!(reqwest::get(ks.url(OTHER_FILE, edk)).await.unwrap().status(), 404);
    assert_eq!(drm_calls(&emu), 1);
}

/// A burst of 150 task-flow events (one EDK each) through the DRM handler: concurrent
/// deliveries' EDKs leave in DescribeDrmDataKey calls of up to ten, so the burst takes a
/// handful of calls instead of 150 (90 s at v2's 100 calls/min), and every key is stored,
/// sealed at rest (`[keys] encryption_key_file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_150_task_flows_takes_calls_of_ten() {
    let emu = emulator(fast_emulator_config()).await;
    emu.enqueue_generated_type("ProcedureStateChanged", 150).unwrap();
    let issued = emu.issued_keys();
    assert_eq!(issued.len(), 150, "one EDK per generated task flow");
    // And sealed at rest by the daemon's store.
    let keys_dir = tempfile::tempdir().unwrap();
    let key_file = keys_dir.path().join("keys-encryption");
    write_key_file(&key_file, &[("k1", 7)]);
    let config = format!(
        "[keys]\nencryption_key_file = \"{}\"\n[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\nconcurrency = 30\n",
        key_file.display()
    );
    let started = Instant::now();
    let daemon = crate::support::TestDaemon::start(&emu.endpoint(), &config).await;
    crate::support::eventually(Duration::from_secs(120), "150 deliveries done", || {
        daemon.delivery_states().get("done") == Some(&150)
    })
    .await;
    let took = started.elapsed();
    let calls = drm_calls(&emu);
    assert!((15..=30).contains(&calls), "150 EDKs took {calls} DescribeDrmDataKey calls");
    let store = daemon.store().unwrap();
    assert_eq!(store.list_keys(None, 1000).unwrap().len(), 150, "every key stored");
    let raw = store.stored_keys(String::new(), 1000).await.unwrap();
    assert_eq!(raw.len(), 150);
    for (edk, bytes) in &raw {
        let dk = issued.iter().find(|(e, _)| e == edk).unwrap().1;
        assert!(!bytes.windows(16).any(|w| w == dk), "a key stored unsealed");
    }
    let ring = vod_eventd::config::KeysConfig { encryption_key_file: Some(key_file) }.keyring().unwrap();
    let store = store.with_keyring(ring);
    for (edk, dk) in issued.iter().take(5) {
        assert_eq!(store.get_key(edk).unwrap().as_deref(), Some(&dk[..]));
    }
    eprintln!("150 task flows: {calls} DescribeDrmDataKey calls, all done in {took:?}");
}

/// Writes a key file of `(id, byte)` keys (mode 0600) at `path`.
fn write_key_file(path: &std::path::Path, keys: &[(&str, u8)]) {
    use base64::Engine as _;
    let text: String = keys
        .iter()
        .map(|(id, b)| format!("{id}:{}\n", base64::engine::general_purpose::STANDARD.encode([*b; 32])))
        .collect();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// With `[keys] encryption_key_file`, the key server stores the key it fetches sealed (the
/// database holds no key) and serves it; `keys rekey` moves every key to a new first key,
/// after which `keys get` needs only that one; an old key file alone is refused, naming the
/// key id, never a key. Nothing of the key in any output or log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_keys_are_sealed_at_rest_and_rekey_rotates_them() {
    use base64::Engine as _;
    let emu = emulator(fast_emulator_config()).await;
    let edk = "CiAKHGVka2Zvci1maWxlLXNlYWxlZC0wMTIzNDU2Nzg5YWJjZA==";
    let dk: [u8; 16] = std::array::from_fn(|i| 0x90 ^ (i as u8 * 13));
    emu.add_key(edk, dk);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys-encryption");
    write_key_file(&key_file, &[("k1", 1)]);
    let (store, store_extra) = open_store(Backend::Sqlite, dir.path()).await;
    store_v2_event(&store, FILE, &[edk]).await;
    let keys = format!("[keys]\nencryption_key_file = \"{}\"\n", key_file.display());
    let ks = start(dir, (store, store_extra), &emu.endpoint(), "", "", &keys).await;

    let r = reqwest::get(ks.url(FILE, edk)).await.unwrap();
    assert_eq!(r.status(), 200, "{}", ks.log());
    assert_eq!(r.bytes().await.unwrap().to_vec(), dk.to_vec());
    // As stored: sealed under k1, no key in it; a handle without the key file cannot read it.
    let raw = ks.store.stored_keys(String::new(), 10).await.unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(vod_eventd::store::keyring::sealed_under(&raw[0].1).unwrap().as_deref(), Some("k1"));
    assert!(!raw[0].1.windows(16).any(|w| w == dk));
    assert!(ks.store.get_key(edk).is_err());
    // Served again from the store (opened).
    assert_eq!(reqwest::get(ks.url(FILE, edk)).await.unwrap().bytes().await.unwrap().to_vec(), dk.to_vec());

    let config = ks.log_path.with_file_name("config.toml");
    let keys_cmd = |args: &[&str]| cli().arg("keys").args(args).arg("--config").arg(&config).output().unwrap();
    // Rotation: the new key first, the old one still there; rekey; then the old one removed.
    write_key_file(&key_file, &[("k2", 2), ("k1", 1)]);
    let out = keys_cmd(&["rekey"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 keys sealed under key id k2; 0 already were");
    write_key_file(&key_file, &[("k2", 2)]);
    let out = keys_cmd(&["get", "--raw", "--edk", edk]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, dk, "opened with the new key alone");
    // The old key alone no longer opens it: refused, naming the key id.
    write_key_file(&key_file, &[("k1", 1)]);
    let out = keys_cmd(&["get", "--base64", "--edk", edk]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && stderr.contains("key id k2"), "{stderr}");
    // A key file others may read is refused by `config check`.
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = cli().args(["config", "check", "--config"]).arg(&config).output().unwrap();
    let check = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && check.contains("keys.encryption_key_file"), "{check}");

    // The key file lost (no [keys], no credential): the key server refuses to start rather
    // than store new keys in the clear beside the sealed ones (the daemon runs the same check).
    let text = std::fs::read_to_string(&config).unwrap();
    let (before, after) = text.split_once("[keys]\n").expect("the config has [keys]");
    let unkeyed = config.with_file_name("config-unkeyed.toml");
    std::fs::write(&unkeyed, format!("{before}{}", after.split_once('\n').unwrap().1)).unwrap();
    std::fs::set_permissions(&unkeyed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = cli().args(["keyserver", "--config"]).arg(&unkeyed).output().unwrap();
    let lost = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(78), "{lost}");
    assert!(lost.contains("key id k1") && lost.contains("keys-encryption-key"), "{lost}");

    let b64 = base64::engine::general_purpose::STANDARD.encode(dk);
    let hex = vod_eventd::event::hex(&dk);
    for text in [ks.log(), stderr, check, lost] {
        assert!(!text.contains(&b64) && !text.contains(&hex) && !text.contains(&format!("{:?}", &dk[..])));
    }
}
