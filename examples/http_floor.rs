//! The webhook path's floor for BENCHMARKS.md (`bench/floor.sh`): the daemon's own webhook
//! handler (same client, headers and signature) posts a stored event N times, C at a time,
//! to a receiver, on one current-thread runtime as in the daemon, with no store, no
//! queue and no dispatcher. Its CPU per 1,000 posts is what any delivery costs before the
//! outbox adds a byte: the part of vod-eventd's CPU per event no bookkeeping change can
//! remove.
//!
//! With `raw` instead of `webhook` it posts the same bytes over C plain keep-alive TCP
//! connections instead, written and read by hand (request prebuilt, response read up to
//! its `Content-Length`): the cost of the I/O alone, which no HTTP client goes below.
//!
//! `http_floor URL POSTS CONCURRENCY webhook|raw BODY_FILE`: BODY_FILE holds the body to post
//! (`bench/floor.sh` takes an event the daemon stored in the same configuration). Prints one
//! line of `key=value` figures.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use vod_eventd::api::Clients;
use vod_eventd::handler::{AnyHandler, Delivery, HandlerConfig};
use vod_eventd::store::Store;

// The daemon's allocator, so the handler costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, posts, concurrency, client, body] = &args[..] else {
        anyhow::bail!("usage: http_floor URL POSTS CONCURRENCY webhook|raw BODY_FILE");
    };
    let (posts, concurrency): (usize, usize) = (posts.parse()?, concurrency.parse()?);
    let body: Arc<str> = std::fs::read_to_string(body)?.trim_end().into();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (cpu_before, start) = (cpu_seconds(), Instant::now());
    let failed = if client == "raw" {
        runtime.block_on(raw_posts(url, &body, posts, concurrency))?
    } else {
        handler_posts(&runtime, url, &body, posts, concurrency)?
    };
    let (cpu, secs) = (cpu_seconds() - cpu_before, start.elapsed().as_secs_f64());
    println!(
        "http_floor client={client} body_bytes={} posts={posts} concurrency={concurrency} failed={failed} \
         seconds={secs:.2} cpu_s={cpu:.2} cpu_s_per_1000={:.3}",
        body.len(),
        cpu * 1000.0 / posts as f64
    );
    Ok(())
}

/// Posts through the daemon's webhook handler; returns how many attempts failed.
fn handler_posts(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    body: &Arc<str>,
    posts: usize,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[vod]\nsecret_id = \"AKIDemulatorDEMOsecretID0000000000000\"\nsecret_key = \"unused\"\n\
             [handlers.sink]\ntype = \"webhook\"\nurl = \"{url}\"\n\
             secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nconcurrency = {concurrency}\n"
        ),
    )?;
    let config: HandlerConfig = vod_eventd::config::load(&path)?.handlers.remove("sink").expect("configured above");
    let store = Store::open(&dir.path().join("unused.db"), std::time::Duration::from_secs(1))?;
    let handler = Arc::new(AnyHandler::build("sink", &config, Arc::new(Clients::default()), store)?);
    runtime.block_on(async move {
        let permits = Arc::new(Semaphore::new(concurrency));
        let (mut tasks, mut failed) = (tokio::task::JoinSet::new(), 0);
        for i in 0..posts {
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (handler, body) = (handler.clone(), body.clone());
            tasks.spawn(async move {
                let delivery = Delivery {
                    delivery_id: i as i64,
                    event_id: i as i64,
                    webhook_id: format!("msg_{i:032x}"),
                    attempt: 1,
                    created_at: 0,
                    event_type: "NewFileUpload".into(),
                    file_id: Some("5285890700000003384".into()),
                    task_id: None,
                    body: body.to_string(),
                    source: "default".into(),
                    sub_app_id: None,
                    claim_token: 0,
                };
                let ok = handler.handle(&delivery).await.is_ok();
                drop(permit);
                ok
            });
            while let Some(done) = tasks.try_join_next() {
                failed += usize::from(!done?);
            }
        }
        while let Some(done) = tasks.join_next().await {
            failed += usize::from(!done?);
        }
        Ok(failed)
    })
}

/// Posts the same bytes over `concurrency` keep-alive connections by hand; returns how many
/// answers were not 2xx.
async fn raw_posts(url: &str, body: &str, posts: usize, concurrency: usize) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("raw: an http:// URL"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
         webhook-id: msg_00000000000000000000000000000000\r\nwebhook-timestamp: 1764136800\r\n\
         webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let (request, authority) = (request.clone(), authority.to_string());
        let share = posts / concurrency + usize::from(c < posts % concurrency);
        tasks.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            let (mut buf, mut failed) = (Vec::with_capacity(4096), 0);
            for _ in 0..share {
                stream.write_all(&request).await?;
                buf.clear();
                // Head, then the body up to its length.
                let head_end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    anyhow::ensure!(stream.read_buf(&mut buf).await? > 0, "closed");
                };
                let head = std::str::from_utf8(&buf[..head_end])?.to_ascii_lowercase();
                let length: usize = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(Ok(0), |v| v.trim().parse())?;
                while buf.len() < head_end + length {
                    anyhow::ensure!(stream.read_buf(&mut buf).await? > 0, "closed");
                }
                failed += usize::from(!head.starts_with("http/1.1 2"));
            }
            anyhow::Ok(failed)
        });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        failed += done??;
    }
    Ok(failed)
}
