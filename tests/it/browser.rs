//! The key server in a real browser. The daemon's DRM handler fetches the data key of an
//! emulated task flow's EDK with DescribeDrmDataKey and stores it; ffmpeg encrypts a few
//! seconds of test video (AES-128 HLS) with the key the emulator holds for that EDK, the
//! playlist's `#EXT-X-KEY` URI being the key server's, with the EDK, its file and a token
//! minted by `vod-eventd keys token`; Debian's Chromium (headless, driven by
//! puppeteer-core, which downloads no browser) plays it with hls.js from a page on another
//! origin, so the key request is a cross-origin one (CORS on the real path). It plays past
//! 2 s with no hls.js error; with an expired token hls.js reports a key-load error (403,
//! readable because refusals carry CORS too) and no frame is decoded.
//!
//! Tools: Chromium, `ffmpeg`, `node` and `npm` (`.ci/test-deps` installs them). Chromium is
//! Debian's `chromium`, or on Ubuntu (where it is only a snap) `chromium-browser` or
//! `/snap/bin/chromium` when the snap is there; `CHROMIUM=path` names another. Where none
//! runs (an Ubuntu container has no snap), the test says it was skipped and why, unless
//! `VOD_TESTS_REQUIRE_BROWSER=1` (set by `.ci/run` on Debian), which makes that a failure.
//! The JS is in tests/browser/ (the page, the driver, package.json and package-lock.json
//! pinning hls.js and puppeteer-core), installed with `npm ci` once into
//! target/tmp/browser-node and reused while the lock file is unchanged.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use vod_eventd::keyserver::token::{mint, Scope};

use crate::support::{cli, command, emulator, eventually, fast_emulator_config, free_port, TestDaemon};

/// The token secret of the key server under test.
const SECRET: &str = "browser-test-secret-0123456789abcdefghij";
/// The key server's path (the encryption template's `getKeyUrl` path).
const KEY_PATH: &str = "/vod/key";
/// How long the page may take to play past 2 s, or to give up on its key.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// What installs this test's tools.
const INSTALL: &str = "`bash .ci/test-deps` installs it (apt-get install -y chromium ffmpeg npm)";
/// Where Chromium may be, in order: Debian's package, Ubuntu's wrapper of the snap, the snap.
const CHROMIUMS: [&str; 3] = ["chromium", "chromium-browser", "/snap/bin/chromium"];

/// The tests' own copy of hls.js and puppeteer-core: `npm ci` of tests/browser/ into
/// target/tmp/browser-node, once, and again only when the lock file changes.
fn node_modules() -> &'static Path {
    static MODULES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULES.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-node");
        let lock = std::fs::read_to_string(source.join("package-lock.json")).unwrap();
        let stamp = dir.join("lock.installed");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
            std::fs::create_dir_all(&dir).unwrap();
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(source.join(file), dir.join(file)).unwrap();
            }
            let out = command("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                // puppeteer-core downloads nothing by itself; this keeps it so.
                .env("PUPPETEER_SKIP_DOWNLOAD", "1")
                .output()
                .unwrap_or_else(|e| panic!("npm: cannot run it ({e}); {INSTALL}"));
            assert!(out.status.success(), "npm ci of tests/browser failed:\n{}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(&stamp, lock).unwrap();
        }
        dir.join("node_modules")
    })
}

/// Whether `tool arg` runs and succeeds.
fn runs(tool: &str, arg: &str) -> bool {
    command(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The Chromium to drive: `CHROMIUM` if set, else the first of [`CHROMIUMS`] that runs.
/// `None` (the test is skipped, saying so) where none runs and
/// `VOD_TESTS_REQUIRE_BROWSER` is not `1`; a failure naming the package where it is.
/// Fails, saying what to install, when another tool the test needs is missing.
fn require_tools() -> Option<String> {
    for (tool, arg) in [("ffmpeg", "-version"), ("node", "--version"), ("npm", "--version")] {
        assert!(runs(tool, arg), "{tool} is missing or does not run: {INSTALL}");
    }
    if let Ok(named) = std::env::var("CHROMIUM") {
        assert!(runs(&named, "--version"), "CHROMIUM={named} does not run");
        return Some(named);
    }
    // puppeteer wants a path, not a name to look up.
    let path_of = |name: &str| {
        let dirs = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&dirs).map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| name.into())
    };
    let found = CHROMIUMS.iter().find(|c| runs(c, "--version")).map(|c| path_of(c).display().to_string());
    if found.is_none() {
        let why = format!("no Chromium runs here (tried {}): {INSTALL} on Debian; on Ubuntu Chromium is only a snap (snap install chromium)", CHROMIUMS.join(", "));
        assert!(std::env::var("VOD_TESTS_REQUIRE_BROWSER").as_deref() != Ok("1"), "{why}");
        eprintln!("SKIPPED hls_js_in_chromium_plays_a_stream_whose_key_the_key_server_serves: {why}");
    }
    found
}

/// Encrypts 6 s of test video (three 2 s segments) as AES-128 HLS with `key` into `dir`,
/// the `#EXT-X-KEY` URI being `key_uri`; returns the playlist's text.
fn encrypted_stream(dir: &Path, key: &[u8; 16], key_uri: &str) -> String {
    std::fs::write(dir.join("stream.key"), key).unwrap();
    // The key info file: the URI written into the playlist, the key file, the IV (zeros,
    // as VOD's playlists carry).
    let info = format!("{key_uri}\n{}\n{}\n", dir.join("stream.key").display(), "0".repeat(32));
    std::fs::write(dir.join("stream.keyinfo"), info).unwrap();
    let out = command("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "6"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"])
        .args(["-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod", "-hls_key_info_file"])
        .arg(dir.join("stream.keyinfo"))
        .arg("-hls_segment_filename")
        .arg(dir.join("seg%d.ts"))
        .arg(dir.join("stream.m3u8"))
        .output()
        .unwrap_or_else(|e| panic!("ffmpeg: cannot run it ({e}); {INSTALL}"));
    assert!(out.status.success(), "ffmpeg failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // The key file is not served: only the key server hands the key out.
    std::fs::remove_file(dir.join("stream.key")).unwrap();
    std::fs::remove_file(dir.join("stream.keyinfo")).unwrap();
    std::fs::read_to_string(dir.join("stream.m3u8")).unwrap()
}

/// Serves the files of `dir` (no subdirectories) on `listener` until `stop`: the page's
/// origin, which is not the key server's.
fn serve_page(listener: tokio::net::TcpListener, dir: PathBuf, stop: CancellationToken) {
    let answer = move |req: hyper::Request<hyper::body::Incoming>, _peer| {
        let dir = dir.clone();
        async move {
            let name = req.uri().path().trim_start_matches('/').to_string();
            let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("m3u8") => "application/vnd.apple.mpegurl",
                Some("ts") => "video/mp2t",
                _ => "application/octet-stream",
            };
            let file = (!name.contains('/') && !name.is_empty()).then(|| std::fs::read(dir.join(&name)).ok()).flatten();
            let mut r = Response::new(Full::new(Bytes::from(file.clone().unwrap_or_default())));
            if file.is_some() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
            } else {
                *r.status_mut() = StatusCode::NOT_FOUND;
            }
            r
        }
    };
    let limits = vod_eventd::http::METRICS_LIMITS;
    tokio::spawn(vod_eventd::http::serve_with(listener, limits, None, stop, "Test page", answer));
}

/// Opens `page` in headless Chromium and returns the page's report (tests/browser/drive.js).
async fn play(chromium: &str, page: &str) -> Value {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/drive.js");
    let out = Command::from(command("node"))
        .arg(driver)
        .arg(page)
        .arg(PAGE_TIMEOUT.as_millis().to_string())
        .env("NODE_PATH", node_modules())
        .env("CHROMIUM", chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PAGE_TIMEOUT + Duration::from_secs(30), out)
        .await
        .expect("the browser driver finished")
        .unwrap_or_else(|e| panic!("node: cannot run it ({e}); {INSTALL}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() != Some(1), "the browser driver failed:\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the driver printed no report ({e}):\n{stdout}\n{stderr}"));
    assert!(out.status.success(), "the page did not finish within {PAGE_TIMEOUT:?}: {report:#}");
    report
}

/// The key server of the daemon's config, started as its own process.
async fn start_keyserver(daemon: &TestDaemon, base: &str) -> Child {
    let child = Command::from(cli())
        .args(["keyserver", "--config"])
        .arg(&daemon.config_path)
        .env("RUST_LOG", "vod_eventd=info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vod-eventd keyserver");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/healthz")).await.is_ok_and(|r| r.status() == 200) {
        assert!(std::time::Instant::now() < deadline, "the key server did not answer /healthz");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// A counter of the key server's metrics.
async fn served(metrics: &str, outcome: &str) -> u64 {
    let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    let prefix = format!("vod_eventd_keyserver_requests_total{{outcome=\"{outcome}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_in_chromium_plays_a_stream_whose_key_the_key_server_serves() {
    let Some(chromium) = require_tools() else { return };
    let modules = node_modules();

    // An emulated task flow with one EDK; the daemon's DRM handler fetches its key.
    let emu = emulator(fast_emulator_config()).await;
    let content = emu.enqueue_generated_type("ProcedureStateChanged", 1).unwrap().remove(0);
    let event: Value = serde_json::from_str(&content).unwrap();
    let file_id = event["data"]["fileId"].as_str().expect("a task flow names its file").to_string();
    let [(edk, _)] = &emu.issued_keys()[..] else { panic!("one EDK expected: {content}") };
    let edk = edk.clone();
    assert_eq!(event["data"]["drm"]["edkList"][0], edk.as_str());
    let dk = emu.data_key(&edk).expect("the emulator's DescribeDrmDataKey answers for it");

    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let (key_port, metrics_port) = (free_port(), free_port());
    let key_base = format!("http://127.0.0.1:{key_port}");
    assert_ne!(page_origin, key_base, "the page is on another origin");
    let config = format!(
        "[[routes]]\nevents = [\"ProcedureStateChanged\"]\nhandlers = [\"keys\"]\n[handlers.keys]\ntype = \"drm\"\n\
         [keyserver]\nlisten = \"127.0.0.1:{key_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         path = \"{KEY_PATH}\"\ntoken_secrets = [\"{SECRET}\"]\nallow_origins = [\"{page_origin}\"]\n"
    );
    let daemon = TestDaemon::for_emulator(&emu, &config).await;
    eventually(Duration::from_secs(30), "the DRM handler stored the key", || {
        daemon.delivery_states().get("done") == Some(&1)
    })
    .await;
    assert_eq!(emu.stats().api.calls.get("DescribeDrmDataKey"), Some(&1), "{}", daemon.log());
    let _keyserver = start_keyserver(&daemon, &key_base).await;
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");

    // The key URI as VOD writes it, plus the token: a fresh one from `keys token`.
    let mut mint_cli = cli();
    mint_cli.args(["keys", "token", "--file-id", &file_id, "--ttl", "10m", "--config"]).arg(&daemon.config_path);
    let out = mint_cli.output().unwrap();
    assert!(out.status.success(), "keys token: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let edk_param: String = percent_encoding::utf8_percent_encode(&edk, percent_encoding::NON_ALPHANUMERIC).to_string();
    let key_uri = format!("{key_base}{KEY_PATH}?fileId={file_id}&keySource=VodBuildInKMS&edk={edk_param}");

    let site = tempfile::tempdir().unwrap();
    let playlist = encrypted_stream(site.path(), &dk, &format!("{key_uri}&token={token}"));
    assert!(playlist.contains("#EXT-X-KEY:METHOD=AES-128,URI=\""), "{playlist}");
    let expired =
        mint(SECRET.as_bytes(), &Scope::Files(vec![file_id.clone()]), chrono::Utc::now().timestamp() - 60).unwrap();
    std::fs::write(site.path().join("expired.m3u8"), playlist.replace(&token, &expired)).unwrap();
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for file in ["player.html", "player.js"] {
        std::fs::copy(browser.join(file), site.path().join(file)).unwrap();
    }
    std::fs::copy(modules.join("hls.js/dist/hls.min.js"), site.path().join("hls.min.js")).unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    serve_page(page_listener, site.path().to_path_buf(), stop);
    let page = |playlist: &str| format!("{page_origin}/player.html?src={page_origin}/{playlist}");

    // It plays: the key crossed origins, and decrypted the segments.
    let report = play(&chromium, &page("stream.m3u8")).await;
    assert_eq!(report["h264"], true, "Chromium's MSE does not take H.264 (avc1): {report:#}");
    assert_eq!(report["outcome"], "played", "{report:#}");
    assert_eq!(report["errors"], serde_json::json!([]), "no hls.js error: {report:#}");
    assert!(report["currentTime"].as_f64().unwrap() > 2.0, "{report:#}");
    assert!(report["framesDecoded"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["keysLoaded"].as_u64().unwrap() >= 1, "{report:#}");
    assert!(served(&metrics, "served").await >= 1, "the key came from the key server");

    // An expired token: a key-load error, a 403 the page could read, nothing decrypted.
    let report = play(&chromium, &page("expired.m3u8")).await;
    assert_eq!(report["outcome"], "error", "{report:#}");
    let errors = report["errors"].as_array().unwrap();
    let key_error = errors.iter().find(|e| e["details"] == "keyLoadError");
    assert!(key_error.is_some_and(|e| e["code"] == 403), "a key-load error with the status 403: {report:#}");
    assert_eq!(report["keysLoaded"], 0, "{report:#}");
    assert_eq!(report["framesDecoded"], 0, "nothing decrypted: {report:#}");
    assert_eq!(report["currentTime"], 0.0, "{report:#}");
    assert!(served(&metrics, "token_expired").await >= 1, "the key server refused the expired token");
}
