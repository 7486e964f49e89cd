//! `vod-eventd keyserver`, the real binary over a real socket, on a store holding keys
//! inserted through the store's interface, on SQLite and on PostgreSQL: every auth case, a
//! key served for its own file only, CORS, the rate limit, the abuse limits of the
//! listener, and no key, token or whole EDK in its log.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::process::{Child, Command};
use vod_eventd::config::ApiVersion;
use vod_eventd::event::ReceivedEvent;
use vod_eventd::keyserver::token::{mint, Scope};
use vod_eventd::store::{NewKey, Store};

use crate::support::{cli, config_text, free_port, Backend};

/// The signing secret and a retired one that still verifies.
const NEW: &str = "new-token-secret-0123456789abcdefghij";
const OLD: &str = "old-token-secret-0123456789abcdefghij";
/// A secret the key server does not know.
const STRANGER: &str = "stranger-secret-0123456789abcdefghijk";
/// The page's origin.
const PAGE: &str = "https://player.example";

/// EDKs long enough that a whole one in a log line is unmistakable; the third is base64
/// with `+`, `/` and `=`, as Tencent's are.
const EDK1: &str = "CiAKHGVka2Zvci1maWxlLW9uZS0wMTIzNDU2Nzg5YWJjZGVm";
const EDK2: &str = "CiAKHGVka2Zvci1maWxlLXR3by0wMTIzNDU2Nzg5YWJjZGVm";
const EDK3: &str = "CiAK+GVka2Zvci/maWxlLW9uZS0wMTIzNDU2Nzg5YWJjZA==";
const FILE1: &str = "5285890781763144364";
const FILE2: &str = "5285890781763144999";

/// A key server under test, with its temp dir and log.
struct KeyServerUnderTest {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    base: String,
    metrics: String,
    child: Child,
    _store: Store,
}

impl KeyServerUnderTest {
    fn url(&self, query: &str) -> String {
        format!("{}/vod/key?{query}", self.base)
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        crate::support::command("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A store of `backend` holding three keys (EDK1 and EDK3 of FILE1, EDK2 of FILE2), and
/// the `[store]` keys that name it.
async fn store_with_keys(backend: Backend, dir: &std::path::Path) -> (Store, String) {
    let (store, store_extra) = match backend {
        Backend::Sqlite => (Store::open(&dir.join("events.db"), Duration::from_secs(5)).unwrap(), String::new()),
        Backend::Postgres => {
            let url = crate::pg::database().await;
            let config = vod_eventd::config::StoreConfig { url: Some(url.clone().into()), ..Default::default() };
            let store = tokio::task::spawn_blocking(move || Store::open_for_cli(&config)).await.unwrap().unwrap();
            (store, format!("url = \"{url}\"\n"))
        }
    };
    let event = ReceivedEvent::from_content(
        &format!(r#"{{"eventType":"ProcedureStateChanged","data":{{"fileId":"{FILE1}"}}}}"#),
        ApiVersion::V2,
    );
    let event_id = store.insert_events(vec![(event, vec![])]).await.unwrap()[0].id;
    let key = |edk: &str, file: &str, dk: u8| NewKey {
        edk: edk.into(),
        dk: [dk; 16],
        file_id: Some(file.into()),
        key_source: Some("VodBuildInKMS".into()),
        definition: Some(10),
        event_id,
        sealed: None,
    };
    let keys = vec![key(EDK1, FILE1, 0xa1), key(EDK2, FILE2, 0xb2), key(EDK3, FILE1, 0xc3)];
    assert_eq!(store.insert_keys(keys).await.unwrap(), 3);
    (store, store_extra)
}

/// Starts `vod-eventd keyserver` on a store of `backend` with keys, `[keyserver]` holding
/// `keyserver` after the listen address; waits until `/healthz` answers 200.
async fn start(backend: Backend, keyserver: &str) -> KeyServerUnderTest {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_extra) = store_with_keys(backend, dir.path()).await;
    let (port, metrics_port) = (free_port(), free_port());
    let extra = format!(
        "[keyserver]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{keyserver}"
    );
    let config_path = dir.path().join("config.toml");
    // The key server calls no Tencent API: the endpoint is never contacted.
    let config = config_text(&dir.path().join("events.db"), "http://127.0.0.1:9/v2/index.php", &store_extra, &extra);
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("keyserver.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::from(cli())
        .args(["keyserver", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "vod_eventd=trace")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vod-eventd keyserver");
    let ks = KeyServerUnderTest {
        _dir: dir,
        config_path,
        log_path,
        base: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        child,
        _store: store,
    };
    // Over TLS (a test certificate for localhost), readiness is looked at without checking it.
    let tls = keyserver.contains("tls_cert");
    let ks = if tls { KeyServerUnderTest { base: format!("https://localhost:{port}"), ..ks } } else { ks };
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe.get(format!("{}/healthz", ks.base)).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {
                assert!(Instant::now() < deadline, "the key server did not answer /healthz:\n{}", ks.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    ks
}

fn secrets_line() -> String {
    format!("path = \"/vod/key\"\ntoken_secrets = [\"{NEW}\", \"{OLD}\"]\nallow_origins = [\"{PAGE}\"]\nmax_age = \"10m\"\nrate_per_client = 0\n")
}

/// A token from `vod-eventd keys token`, as an operator mints one.
fn cli_token(ks: &KeyServerUnderTest, args: &[&str]) -> String {
    let out = cli().args(["keys", "token", "--config"]).arg(&ks.config_path).args(args).output().unwrap();
    assert!(out.status.success(), "keys token: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!token.is_empty() && !token.contains('.'), "{token}");
    token
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn query(file: &str, edk: &str, token: Option<&str>) -> String {
    let edk: String = percent_encoding::utf8_percent_encode(edk, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut q = format!("fileId={file}&keySource=VodBuildInKMS&edk={edk}");
    if let Some(token) = token {
        q.push_str(&format!("&token={token}"));
    }
    q
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

both_stores!(
    keys_go_to_their_own_file_with_a_valid_token_only,
    cors_answers_listed_origins_only,
    cookie_auth_takes_the_token_from_its_cookie
);

async fn keys_go_to_their_own_file_with_a_valid_token_only(backend: Backend) {
    let ks = start(backend, &secrets_line()).await;
    let t1 = cli_token(&ks, &["--file-id", FILE1, "--ttl", "2h"]);

    // The key, as a player fetches it.
    let r = get(&ks.url(&query(FILE1, EDK1, Some(&t1)))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["cache-control"], "private, max-age=600");
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![0xa1; 16], "the 16 raw bytes");
    // A base64 EDK percent-encoded, or as it is (`+` stays `+`).
    assert_eq!(get(&ks.url(&query(FILE1, EDK3, Some(&t1)))).await.bytes().await.unwrap().to_vec(), vec![0xc3; 16]);
    let raw = format!("fileId={FILE1}&keySource=VodBuildInKMS&edk={EDK3}&token={t1}");
    assert_eq!(get(&ks.url(&raw)).await.bytes().await.unwrap().to_vec(), vec![0xc3; 16]);
    // HEAD: the headers, no body.
    let head = reqwest::Client::new().head(ks.url(&query(FILE1, EDK1, Some(&t1)))).send().await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["content-length"].to_str().unwrap()), (200, "16"));
    assert!(head.bytes().await.unwrap().is_empty());

    // Auth: none, tampered, expired, for another file, from a secret it does not know.
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, None))).await.status(), 401);
    let mut tampered = t1.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(std::str::from_utf8(&tampered).unwrap())))).await.status(), 403);
    let files = |f: &str| Scope::Files(vec![f.to_string()]);
    let expired = mint(NEW.as_bytes(), &files(FILE1), now() - 1).unwrap();
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(&expired)))).await.status(), 403);
    let t2 = cli_token(&ks, &["--file-id", FILE2]);
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(&t2)))).await.status(), 403, "a token for another file");
    let stranger = mint(STRANGER.as_bytes(), &files(FILE1), now() + 60).unwrap();
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(&stranger)))).await.status(), 403);
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some("not-a-token")))).await.status(), 403);
    // Rotation: a token of the retired secret still opens its file.
    let old = mint(OLD.as_bytes(), &files(FILE1), now() + 60).unwrap();
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(&old)))).await.status(), 200);

    // A key only for its own file: a valid token for FILE1 never yields FILE2's key.
    assert_eq!(get(&ks.url(&query(FILE1, EDK2, Some(&t1)))).await.status(), 404, "another file's EDK");
    assert_eq!(get(&ks.url(&query(FILE2, EDK1, Some(&t2)))).await.status(), 404, "and the other way round");
    assert_eq!(get(&ks.url(&query(FILE2, EDK2, Some(&t2)))).await.bytes().await.unwrap().to_vec(), vec![0xb2; 16]);
    assert_eq!(get(&ks.url(&query(FILE1, "bm9zdWNoZWRr", Some(&t1)))).await.status(), 404, "an unknown EDK");
    // A list and a prefix.
    let both = cli_token(&ks, &["--file-id", FILE1, "--file-id", FILE2]);
    assert_eq!(get(&ks.url(&query(FILE2, EDK2, Some(&both)))).await.status(), 200);
    let prefix = cli_token(&ks, &["--prefix", "52858907817631443"]);
    assert_eq!(get(&ks.url(&query(FILE1, EDK1, Some(&prefix)))).await.status(), 200);
    assert_eq!(get(&ks.url(&query(FILE2, EDK2, Some(&prefix)))).await.status(), 403);

    // Anything but exactly the key URI's query, another path, another method.
    assert_eq!(get(&ks.url(&format!("{}&extra=1", query(FILE1, EDK1, Some(&t1))))).await.status(), 400);
    assert_eq!(get(&ks.url(&format!("fileId={FILE1}&token={t1}"))).await.status(), 400);
    assert_eq!(get(&format!("{}/other?{}", ks.base, query(FILE1, EDK1, Some(&t1)))).await.status(), 404);
    let post = reqwest::Client::new().post(ks.url(&query(FILE1, EDK1, Some(&t1)))).send().await.unwrap();
    assert_eq!(post.status(), 405);

    // The outcomes counted, on the metrics listener only.
    let metrics = get(&ks.metrics).await.text().await.unwrap();
    let count = |outcome: &str| -> u64 {
        let prefix = format!("vod_eventd_keyserver_requests_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(count("served"), 8, "{metrics}");
    assert_eq!((count("no_token"), count("token_expired"), count("token_other_file")), (1, 1, 2), "{metrics}");
    assert_eq!((count("token_bad_signature"), count("token_malformed"), count("unknown_pair")), (2, 1, 3), "{metrics}");
    assert_eq!((count("bad_request"), count("method_not_allowed")), (2, 1), "{metrics}");
    assert!(metrics.contains("vod_eventd_keyserver_request_seconds_count 21"), "{metrics}");
    assert!(!metrics.contains(FILE1) && !metrics.contains(EDK1), "no id in a label");
    assert_eq!(get(&format!("{}/metrics", ks.base)).await.status(), 404, "players do not see the metrics");

    // Nothing secret in the log, even at trace level.
    let log = ks.log();
    assert!(log.contains("Key server listening"), "{log}");
    // The refusals were logged (at debug), so the checks below read real lines.
    for line in ["Key request with a refused token", "No key stored for this file and EDK", "Key request refused"] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    for secret in [t1.as_str(), t2.as_str(), old.as_str(), expired.as_str(), EDK1, EDK2, EDK3, NEW, OLD] {
        assert!(!log.contains(secret), "the log holds a token, an EDK or a secret:\n{log}");
    }
    for dk in [0xa1u8, 0xb2, 0xc3] {
        let b64 = base64::engine::general_purpose::STANDARD.encode([dk; 16]);
        let hex = format!("{dk:02x}").repeat(16);
        assert!(!log.contains(&b64) && !log.contains(&hex), "the log holds a key:\n{log}");
    }
}

async fn cors_answers_listed_origins_only(backend: Backend) {
    let ks = start(backend, &secrets_line()).await;
    let token = mint(NEW.as_bytes(), &Scope::Files(vec![FILE1.into()]), now() + 60).unwrap();
    let url = ks.url(&query(FILE1, EDK1, Some(&token)));
    let client = reqwest::Client::new();
    let listed = client.get(&url).header("Origin", PAGE).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], PAGE, "the origin echoed");
    assert_eq!(listed.headers()["vary"], "Origin");
    let other = client.get(&url).header("Origin", "https://elsewhere.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none(), "never for an unlisted origin");
    assert_eq!(other.headers()["vary"], "Origin");
    let none = client.get(&url).send().await.unwrap();
    assert!(none.headers().get("access-control-allow-origin").is_none());
    // Refusals carry the header too, so the page's player can read the status.
    let refused = client.get(ks.url(&query(FILE1, EDK1, None))).header("Origin", PAGE).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], PAGE);

    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .send()
    };
    let ok = preflight(PAGE).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], PAGE);
    assert_eq!(ok.headers()["access-control-allow-methods"], "GET, HEAD");
    let refused = preflight("https://elsewhere.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    assert!(refused.headers().get("access-control-allow-methods").is_none());
    for header in [&listed, &other, &none] {
        assert_ne!(header.headers().get("access-control-allow-origin").map(|v| v.as_bytes()), Some(&b"*"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_above_its_rate_gets_429() {
    let ks = start(Backend::Sqlite, &secrets_line().replace("rate_per_client = 0", "rate_per_client = 3")).await;
    let token = mint(NEW.as_bytes(), &Scope::Files(vec![FILE1.into()]), now() + 60).unwrap();
    let url = ks.url(&query(FILE1, EDK1, Some(&token)));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&url).await.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "a burst of the rate passes");
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = get(&url).await;
    if limited.status() == 429 {
        assert_eq!(limited.headers()["retry-after"], "1");
    }
    // The bucket refills: served again within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&url).await.status() != 200 {
        assert!(Instant::now() < deadline, "the client was not served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_and_connections_are_capped() {
    let extra = format!("{}max_connections = 1\nheader_read_timeout = \"1s\"\n", secrets_line());
    let ks = start(Backend::Sqlite, &extra).await;
    let address = ks.base.trim_start_matches("http://").to_string();
    // A client that sends part of a request line and stops (slowloris) is cut by the header
    // read timeout...
    let slowloris = || {
        let mut slow = std::net::TcpStream::connect(&address).unwrap();
        slow.write_all(b"GET /vod/key?fileId=1 HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        slow
    };
    let mut slow = slowloris();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(9), "the slow client was not cut");
    // ...and while one holds the only slot, a new client takes the place of the oldest
    // connection still sending its headers: it is answered, the slow one is closed at once.
    let mut slow = slowloris();
    let r = reqwest::get(format!("{}/healthz", ks.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let _ = slow.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_millis(900), "the slow client kept its slot");
    // A request head above 16 KiB is refused.
    let big =
        reqwest::Client::new().get(format!("{}/healthz", ks.base)).header("X-Big", "a".repeat(20_000)).send().await;
    if let Ok(r) = big {
        assert_eq!(r.status(), 431);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_none_serves_on_loopback_and_is_refused_elsewhere() {
    let ks = start(Backend::Sqlite, "path = \"/vod/key\"\nauth = \"none\"\n").await;
    let r = get(&ks.url(&query(FILE1, EDK1, None))).await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![0xa1; 16]);
    assert_eq!(get(&ks.url(&query(FILE1, EDK2, None))).await.status(), 404, "still only for its own file");
    assert!(ks.log().contains("keyserver.auth = \"none\""), "warned: {}", ks.log());

    // Off loopback without trust_proxy: refused by `config check`, and the key server does not start.
    let config = std::fs::read_to_string(&ks.config_path).unwrap();
    let open = config.replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    std::fs::write(&ks.config_path, &open).unwrap();
    for args in [&["config", "check"][..], &["keyserver"][..]] {
        let out = cli().args(args).arg("--config").arg(&ks.config_path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert!(stderr.contains("keyserver.auth"), "{stderr}");
    }
    std::fs::write(&ks.config_path, open.replace("auth = \"none\"", "auth = \"none\"\ntrust_proxy = true")).unwrap();
    let out = cli().args(["config", "check", "--config"]).arg(&ks.config_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_section_or_a_secret_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    let base = config_text(&dir.path().join("events.db"), "http://127.0.0.1:9/v2/index.php", "", "");
    std::fs::write(&config_path, &base).unwrap();
    for args in [&["keyserver"][..], &["keys", "token", "--file-id", "f"][..]] {
        let out = cli().args(args).arg("--config").arg(&config_path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(78) && stderr.contains("[keyserver]"), "{args:?}: {stderr}");
    }
    std::fs::write(&config_path, format!("{base}[keyserver]\n")).unwrap();
    for args in [&["keyserver"][..], &["keys", "token", "--file-id", "f"][..]] {
        let out = cli().args(args).arg("--config").arg(&config_path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(78) && stderr.contains("no token secret"), "{args:?}: {stderr}");
    }
}

/// The README's Python recipe, verbatim.
const PYTHON_RECIPE: &str = r#"import base64, hashlib, hmac, time

def key_token(secret: str, file_id: str, ttl: int = 7200) -> str:
    payload = f"vod1:{int(time.time()) + ttl}:f={file_id}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()
"#;

/// The README's shell recipe after its two assignments (`secret`, `file_id`), verbatim.
const SHELL_RECIPE: &str = r#"payload="vod1:$(( $(date +%s) + 7200 )):f=$file_id"
{ printf '%s' "$payload"; printf '%s' "$payload" | openssl dgst -sha256 -hmac "$secret" -binary; } \
    | openssl base64 -A | tr '+/' '-_' | tr -d '='
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_recipes_mint_tokens_the_key_server_takes() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(PYTHON_RECIPE), "the README's Python recipe changed: update PYTHON_RECIPE");
    assert!(readme.contains(SHELL_RECIPE), "the README's shell recipe changed: update SHELL_RECIPE");
    let ks = start(Backend::Sqlite, &secrets_line()).await;
    let python = crate::support::command("python3")
        .arg("-c")
        .arg(format!("{PYTHON_RECIPE}\nimport sys\nprint(key_token(sys.argv[1], sys.argv[2]))"))
        .args([NEW, FILE1])
        .output()
        .expect("python3");
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));
    let shell = crate::support::command("sh")
        .arg("-c")
        .arg(SHELL_RECIPE)
        .env("secret", NEW)
        .env("file_id", FILE1)
        .output()
        .expect("sh with openssl");
    assert!(shell.status.success(), "{}", String::from_utf8_lossy(&shell.stderr));
    for (how, out) in [("Python", python.stdout), ("shell", shell.stdout)] {
        let token = String::from_utf8(out).unwrap().trim().to_string();
        assert!(!token.contains('.') && !token.contains('='), "{how}: {token}");
        let r = get(&ks.url(&query(FILE1, EDK1, Some(&token)))).await;
        assert_eq!(r.status(), 200, "a token minted in {how}");
        assert_eq!(get(&ks.url(&query(FILE2, EDK2, Some(&token)))).await.status(), 403, "{how}: for its file only");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_token_secrets_without_a_restart() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("keyserver-token-secrets");
    std::fs::write(&file, format!("{OLD}\n")).unwrap();
    let ks =
        start(Backend::Sqlite, &format!("path = \"/vod/key\"\ntoken_secret_file = \"{}\"\n", file.display())).await;
    let token = |secret: &str| mint(secret.as_bytes(), &Scope::Files(vec![FILE1.into()]), now() + 600).unwrap();
    let status = |token: String| {
        let url = ks.url(&query(FILE1, EDK1, Some(&token)));
        async move { get(&url).await.status().as_u16() }
    };
    assert_eq!(status(token(OLD)).await, 200);
    assert_eq!(status(token(NEW)).await, 403, "not a secret yet");

    // The new secret first, the old one still verifying.
    std::fs::write(&file, format!("{NEW}\n{OLD}\n")).unwrap();
    ks.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(token(NEW)).await != 200 {
        assert!(Instant::now() < deadline, "the new secret was not taken:\n{}", ks.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(token(OLD)).await, 200, "the old one verifies until it is removed");
    let cli = cli_token(&ks, &["--file-id", FILE1]);
    assert_eq!(status(cli).await, 200, "keys token signs with the first");

    // The old one retired.
    std::fs::write(&file, format!("{NEW}\n")).unwrap();
    ks.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(token(OLD)).await != 403 {
        assert!(Instant::now() < deadline, "the old secret still verifies:\n{}", ks.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file changes nothing.
    std::fs::write(&file, "short\n").unwrap();
    ks.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ks.log().contains("the token secrets were not re-read") {
        assert!(Instant::now() < deadline, "no error logged:\n{}", ks.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(token(NEW)).await, 200, "the running secrets stay");
    assert!(!ks.log().contains(NEW) && !ks.log().contains(OLD), "no secret in the log");
}

async fn cookie_auth_takes_the_token_from_its_cookie(backend: Backend) {
    let keyserver = format!("{}auth = \"cookie\"\ncookie = \"vodkey\"\n", secrets_line());
    let ks = start(backend, &keyserver).await;
    let t1 = cli_token(&ks, &["--file-id", FILE1]);
    let client = reqwest::Client::new();
    let url = ks.url(&query(FILE1, EDK1, None));
    let with = |cookie: String| client.get(&url).header("Cookie", cookie).header("Origin", PAGE).send();
    let r = with(format!("other=1; vodkey={t1}; more=2")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], PAGE);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true", "the page sends the cookie with credentials");
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![0xa1; 16]);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401, "no cookie");
    assert_eq!(with("other=1".into()).await.unwrap().status(), 401, "not the configured cookie");
    assert_eq!(
        get(&ks.url(&query(FILE1, EDK1, Some(&t1)))).await.status(),
        401,
        "with auth = cookie the query's token is not taken"
    );
    let t2 = cli_token(&ks, &["--file-id", FILE2]);
    assert_eq!(with(format!("vodkey={t2}")).await.unwrap().status(), 403, "a cookie for another file");
    let cross = client.get(ks.url(&query(FILE1, EDK2, None))).header("Cookie", format!("vodkey={t1}")).send();
    assert_eq!(cross.await.unwrap().status(), 404, "another file's EDK");
    assert!(!ks.log().contains(&t1), "no token in the log");
}

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn certificate(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let out = crate::support::command("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_keys_and_a_renewed_certificate_is_taken_on_sighup() {
    let certs = tempfile::tempdir().unwrap();
    let (first, first_key) = certificate(certs.path(), "first");
    let (second, second_key) = certificate(certs.path(), "second");
    let (cert, key) = (certs.path().join("live.crt"), certs.path().join("live.key"));
    std::fs::copy(&first, &cert).unwrap();
    std::fs::copy(&first_key, &key).unwrap();
    let extra = format!("{}tls_cert = \"{}\"\ntls_key = \"{}\"\n", secrets_line(), cert.display(), key.display());
    let ks = start(Backend::Sqlite, &extra).await;
    assert!(ks.base.starts_with("https://"));
    let port: u16 = ks.base.rsplit(':').next().unwrap().parse().unwrap();
    let trusting = |pem: &PathBuf| {
        let root = reqwest::Certificate::from_pem(&std::fs::read(pem).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .resolve("localhost", ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    };
    let token = mint(NEW.as_bytes(), &Scope::Files(vec![FILE1.into()]), now() + 600).unwrap();
    let url = ks.url(&query(FILE1, EDK1, Some(&token)));
    let r = trusting(&first).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), vec![0xa1; 16], "the key over TLS");
    assert!(trusting(&second).get(&url).send().await.is_err(), "the second certificate is not served yet");
    let plain = format!("http://127.0.0.1:{port}/healthz");
    assert!(reqwest::get(&plain).await.map_or(true, |r| r.status() != 200), "no plain HTTP on a TLS listener");

    // Renewed: the new files, then SIGHUP.
    std::fs::copy(&second, &cert).unwrap();
    std::fs::copy(&second_key, &key).unwrap();
    ks.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = trusting(&second).get(&url).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not taken:\n{}", ks.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file changes nothing.
    std::fs::write(&cert, "not a certificate").unwrap();
    ks.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ks.log().contains("the TLS certificate was not re-read") {
        assert!(Instant::now() < deadline, "no error logged:\n{}", ks.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(trusting(&second).get(&url).send().await.unwrap().status(), 200, "the running certificate stays");
}

/// A key served once is answered from memory for a while (`keyserver::served`): a row
/// deleted by hand behind the key server's back is still served for that pair (for up to a
/// minute), and only for that pair; a pair never served is read from the store, so its
/// deletion shows at once, and a miss is not remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_keys_are_answered_from_memory_for_their_own_pair_only() {
    let ks = start(Backend::Sqlite, &secrets_line()).await;
    let token = mint(NEW.as_bytes(), &Scope::Files(vec![FILE1.into(), FILE2.into()]), now() + 600).unwrap();
    let fetch = |file: &str, edk: &str| {
        let url = ks.url(&query(file, edk, Some(&token)));
        async move {
            let r = get(&url).await;
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(fetch(FILE1, EDK1).await, (200, vec![0xa1; 16]));
    assert_eq!(fetch(FILE1, EDK2).await.0, 404, "another file's EDK, before");
    // Every row deleted, by another connection to the store file.
    let db = rusqlite::Connection::open(ks._dir.path().join("events.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(db.execute("DELETE FROM drm_keys", []).unwrap(), 3);
    assert_eq!(fetch(FILE1, EDK1).await, (200, vec![0xa1; 16]), "the served pair, from memory");
    assert_eq!(fetch(FILE1, EDK2).await.0, 404, "another file's EDK, still");
    assert_eq!(fetch(FILE2, EDK2).await.0, 404, "never served: read from the store, gone");
    assert_eq!(fetch(FILE1, EDK3).await.0, 404);
}
