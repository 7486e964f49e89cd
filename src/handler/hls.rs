//! The EDKs of API 3.0 task-flow results. No v3 event carries an EDK: with legacy HLS
//! encryption, VOD writes each one into the `#EXT-X-KEY` URIs of the playlists it makes
//! (`getKeyUrl?fileId=…&keySource=VodBuildInKMS&edk=EDK`). This module finds the `.m3u8`
//! outputs a `ProcedureStateChanged` event names (transcode and adaptive-streaming results),
//! fetches them (a master playlist leads to its media playlists) with bounded size, time and
//! count, and reads the EDKs out. Plain `http://` URLs are fetched over HTTPS and redirects
//! are not followed unless configured; with `allow_http = false` the client speaks HTTPS
//! only, and no redirect goes from `https` to `http` in any case. Loopback, link-local and
//! private destinations are refused unless allowed by name ([`super::egress`]). Errors
//! name the URL (redacted) and the failure, never what an internal host answered.
//!
//! Reading is linear and bounded: EDKs are collected into an ordered set, at most
//! [`MAX_EDKS_PER_PLAYLIST`] distinct ones per playlist and [`MAX_EDKS_PER_EVENT`] per event
//! (beyond either the event is refused, naming the cap), and each playlist is parsed on the
//! blocking pool, never on the runtime's thread (a 1 MiB playlist is tens of thousands of
//! lines).

use std::time::Duration;

use indexmap::IndexSet;
use reqwest::Url;
use serde_json::Value;

use super::egress::{refused_in, Egress};
use crate::event_types::values_at;

/// Where task-flow results name their output URLs (SDK model `ProcedureTask`).
const OUTPUT_URLS: &[&str] = &[
    "MediaProcessResultSet[].TranscodeTask.Output.Url",
    "MediaProcessResultSet[].AdaptiveDynamicStreamingTask.Output.Url",
];
/// Playlists read per event at most (masters and their media playlists together).
pub const MAX_PLAYLISTS: usize = 32;
/// Distinct EDKs one playlist may name. VOD's legacy encryption uses one key per output;
/// this leaves room for key rotation and refuses a playlist that is nothing but keys.
pub const MAX_EDKS_PER_PLAYLIST: usize = 1_000;
/// Distinct EDKs one event may lead to: 200 DescribeDrmDataKey calls of 10, two minutes at
/// the 100 calls/min limit, well inside the handler's 7 min lease.
pub const MAX_EDKS_PER_EVENT: usize = 2_000;

/// An EDK with its `keySource`.
pub type Edk = (String, Option<String>);

/// How playlists are fetched.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Per request.
    pub timeout: Duration,
    /// Largest playlist read.
    pub max_bytes: usize,
    /// Fetch `http://` URLs as they are (otherwise over HTTPS).
    pub allow_http: bool,
    /// Follow redirects (up to 5).
    pub follow_redirects: bool,
    /// Where the fetcher may connect.
    pub egress: Egress,
}

/// Why the EDKs of an event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    /// Worth retrying: the playlist host failed or was unreachable.
    #[error("{0}")]
    Fetch(String),
    /// Retrying will not help.
    #[error("{0}")]
    Refused(String),
}

/// The `.m3u8` outputs of a v3 `ProcedureStateChanged` event, if it is one.
pub fn playlist_urls(body: &Value) -> Option<Vec<String>> {
    let task = body.get("ProcedureStateChangeEvent").filter(|v| v.is_object())?;
    let mut urls: Vec<String> = Vec::new();
    for path in OUTPUT_URLS {
        for url in values_at(task, path) {
            let is_playlist = Url::parse(&url).is_ok_and(|u| u.path().ends_with(".m3u8"));
            if is_playlist && !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    Some(urls)
}

/// An HTTP client for playlists.
pub fn client(settings: &FetchSettings) -> anyhow::Result<reqwest::Client> {
    let redirect = match settings.follow_redirects {
        true => settings.egress.redirects(5),
        false => reqwest::redirect::Policy::none(),
    };
    Ok(reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .https_only(!settings.allow_http)
        .dns_resolver(settings.egress.resolver())
        .redirect(redirect)
        .user_agent(concat!("vod-eventd/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Every EDK (with its `keySource`) in the playlists at `urls` and the media playlists their
/// masters lead to, each once, in order of appearance.
pub async fn edks(http: &reqwest::Client, settings: &FetchSettings, urls: &[String]) -> Result<Vec<Edk>, HlsError> {
    let mut queue: Vec<Url> = Vec::new();
    for url in urls {
        queue.push(Url::parse(url).map_err(|e| HlsError::Refused(format!("output URL {url:?} is not a URL: {e}")))?);
    }
    let mut seen: Vec<Url> = Vec::new();
    let mut found: IndexSet<Edk> = IndexSet::new();
    while let Some(url) = queue.pop() {
        if seen.contains(&url) {
            continue;
        }
        if seen.len() == MAX_PLAYLISTS {
            return Err(HlsError::Refused(format!("the event's outputs lead to more than {MAX_PLAYLISTS} playlists")));
        }
        seen.push(url.clone());
        let text = fetch(http, settings, &url).await?;
        let base = url.clone();
        let parsed = tokio::task::spawn_blocking(move || parse(&text, &base))
            .await
            .map_err(|e| HlsError::Fetch(format!("playlist {}: parsing stopped: {e}", redact(&url))))?;
        if parsed.keys.len() > MAX_EDKS_PER_PLAYLIST {
            return Err(HlsError::Refused(format!(
                "playlist {} names more than {MAX_EDKS_PER_PLAYLIST} distinct EDKs; VOD writes one per output, so this is not a playlist of a task flow's results",
                redact(&url)
            )));
        }
        found.extend(parsed.keys);
        if found.len() > MAX_EDKS_PER_EVENT {
            return Err(HlsError::Refused(format!(
                "the event's playlists name more than {MAX_EDKS_PER_EVENT} distinct EDKs; VOD writes one per output, so these are not a task flow's results"
            )));
        }
        queue.extend(parsed.variants.into_iter().rev());
    }
    Ok(found.into_iter().collect())
}

async fn fetch(http: &reqwest::Client, settings: &FetchSettings, url: &Url) -> Result<String, HlsError> {
    let mut url = url.clone();
    if url.scheme() == "http" && !settings.allow_http {
        url.set_scheme("https").expect("http and https are both special schemes");
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HlsError::Refused(format!("playlist {} is not on http(s)", redact(&url))));
    }
    settings.egress.check(&url).map_err(|e| HlsError::Refused(format!("playlist {}: {e}", redact(&url))))?;
    let failed = |e: reqwest::Error| match refused_in(&e) {
        Some(refused) => HlsError::Refused(format!("playlist {}: {refused}", redact(&url))),
        None => HlsError::Fetch(format!("playlist {}: {}", redact(&url), e.without_url())),
    };
    let mut response = http.get(url.clone()).send().await.map_err(failed)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(HlsError::Refused(format!(
            "playlist {} answered a redirect (HTTP {status}); set follow_redirects = true for this handler to follow it",
            redact(&url)
        )));
    }
    if !status.is_success() {
        return Err(HlsError::Fetch(format!("playlist {} answered HTTP {status}", redact(&url))));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > settings.max_bytes {
            return Err(HlsError::Refused(format!(
                "playlist {} is larger than {} bytes (playlist_max_bytes)",
                redact(&url),
                settings.max_bytes
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A URL for messages (userinfo and query hidden).
fn redact(url: &Url) -> String {
    crate::redact::url(url.as_str())
}

/// What one playlist says.
#[derive(Debug, Default, PartialEq)]
struct Parsed {
    /// `(edk, keySource)` of its `#EXT-X-KEY` / `#EXT-X-SESSION-KEY` URIs, each once, in
    /// order, up to one more than [`MAX_EDKS_PER_PLAYLIST`] (enough to tell it is over).
    keys: IndexSet<Edk>,
    /// Media playlists a master lists (`#EXT-X-STREAM-INF`, `#EXT-X-MEDIA` and
    /// `#EXT-X-I-FRAME-STREAM-INF` URIs), resolved against the playlist's URL.
    variants: Vec<Url>,
}

fn parse(text: &str, base: &Url) -> Parsed {
    let mut out = Parsed::default();
    let mut next_is_variant = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(tag) = line.strip_prefix('#') {
            let (name, attributes) = tag.split_once(':').unwrap_or((tag, ""));
            let uri = attribute(attributes, "URI").and_then(|u| base.join(&u).ok());
            match name {
                "EXT-X-KEY" | "EXT-X-SESSION-KEY" => {
                    if let Some(uri) = uri {
                        let query = |k: &str| query_value(uri.query().unwrap_or(""), k);
                        if let Some(edk) = query("edk").filter(|e| !e.is_empty()) {
                            out.keys.insert((edk, query("keySource")));
                            if out.keys.len() > MAX_EDKS_PER_PLAYLIST {
                                break;
                            }
                        }
                    }
                }
                "EXT-X-STREAM-INF" => next_is_variant = true,
                "EXT-X-MEDIA" | "EXT-X-I-FRAME-STREAM-INF" => out.variants.extend(uri),
                _ => {}
            }
        } else if std::mem::take(&mut next_is_variant) {
            out.variants.extend(base.join(line).ok());
        }
    }
    out
}

/// The value of `name` in a key URI's query, percent-decoded with `+` kept as `+`: EDKs
/// are base64, a key URI may carry them unescaped, and the key server reads the query the
/// same way (`keyserver::KeyRequest`), so both sides name one EDK by one string. (Form
/// decoding would turn each `+` into a space: a key stored under an EDK no player asks for.)
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

/// The value of `name` in an attribute list (`A=1,URI="x",B=…`), quotes removed.
fn attribute(list: &str, name: &str) -> Option<String> {
    let mut rest = list;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (v, a) = quoted.split_once('"').unwrap_or((quoted, ""));
                (v, a.strip_prefix(',').unwrap_or(a))
            }
            None => after.split_once(',').unwrap_or((after, "")),
        };
        if key.trim() == name {
            return Some(value.to_string());
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_edks_and_variants_as_vod_writes_them() {
        let base = Url::parse("https://1.vod2.myqcloud.com/a/52/master.m3u8").unwrap();
        let master = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=500000,CODECS=\"avc1.4d401e,mp4a.40.2\"\nv.f210.m3u8\n\
                      #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",URI=\"/a/52/audio.m3u8\"\n";
        let parsed = parse(master, &base);
        assert!(parsed.keys.is_empty());
        assert_eq!(
            parsed.variants.iter().map(Url::as_str).collect::<Vec<_>>(),
            ["https://1.vod2.myqcloud.com/a/52/v.f210.m3u8", "https://1.vod2.myqcloud.com/a/52/audio.m3u8"]
        );
        let media = "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"https://getkey.example.com/getkey?fileId=52&keySource=VodBuildInKMS&edk=CiCd%2BpfV8%3D%3D\",IV=0x0\n#EXTINF:10,\ns0.ts\n";
        assert_eq!(
            parse(media, &base).keys.into_iter().collect::<Vec<_>>(),
            [("CiCd+pfV8==".to_string(), Some("VodBuildInKMS".to_string()))]
        );
        // Unescaped, as some key URIs carry it: `+` stays `+` (the key server reads it so).
        let raw = "#EXT-X-KEY:METHOD=AES-128,URI=\"https://k.example.com/getkey?fileId=52&keySource=VodBuildInKMS&edk=CiCd+pf/V8==\"\n";
        assert_eq!(parse(raw, &base).keys.first().map(|(e, _)| e.as_str()), Some("CiCd+pf/V8=="));
        let plain = "#EXTM3U\n#EXT-X-KEY:METHOD=NONE\n#EXTINF:10,\ns0.ts\n";
        assert_eq!(parse(plain, &base), Parsed::default());
    }

    fn key_lines(count: usize, distinct: usize) -> String {
        let mut text = String::from("#EXTM3U\n");
        for i in 0..count {
            let edk = i % distinct;
            text += &format!("#EXT-X-KEY:METHOD=AES-128,URI=\"https://k.example.com/getkey?keySource=VodBuildInKMS&edk=EDK{edk:05}\"\n#EXTINF:10,\ns{i}.ts\n");
        }
        text
    }

    /// 30,000 key lines naming the cap's worth of distinct EDKs: each once, in order,
    /// read in linear time (the list's `contains` made this 30 million comparisons).
    #[test]
    fn thirty_thousand_key_lines_are_read_in_linear_time() {
        let base = Url::parse("https://1.vod2.myqcloud.com/a/52/v.m3u8").unwrap();
        let text = key_lines(30_000, MAX_EDKS_PER_PLAYLIST);
        let started = std::time::Instant::now();
        let parsed = parse(&text, &base);
        let took = started.elapsed();
        assert_eq!(parsed.keys.len(), MAX_EDKS_PER_PLAYLIST);
        assert_eq!(parsed.keys.first().unwrap().0, "EDK00000");
        assert_eq!(parsed.keys.last().unwrap().0, format!("EDK{:05}", MAX_EDKS_PER_PLAYLIST - 1));
        assert!(took < Duration::from_secs(2), "30,000 key lines took {took:?}");
    }

    /// Past the cap, parsing stops at the first EDK over it.
    #[test]
    fn a_playlist_over_the_cap_stops_at_the_first_edk_past_it() {
        let base = Url::parse("https://1.vod2.myqcloud.com/a/52/v.m3u8").unwrap();
        let parsed = parse(&key_lines(30_000, 30_000), &base);
        assert_eq!(parsed.keys.len(), MAX_EDKS_PER_PLAYLIST + 1);
    }

    #[test]
    fn attribute_lists_with_quoted_commas() {
        assert_eq!(attribute("A=1,CODECS=\"x,y\",URI=\"u,v\"", "URI").as_deref(), Some("u,v"));
        assert_eq!(attribute("METHOD=NONE", "URI"), None);
    }

    #[test]
    fn only_m3u8_outputs_of_task_flows_are_read() {
        let body = serde_json::json!({"EventType": "ProcedureStateChanged", "ProcedureStateChangeEvent": {
        "MediaProcessResultSet": [
            {"TranscodeTask": {"Output": {"Url": "http://h/52/v.f230.m3u8?t=1"}}},
            {"TranscodeTask": {"Output": {"Url": "http://h/52/v.f20.mp4"}}},
            {"AdaptiveDynamicStreamingTask": {"Output": {"Url": "http://h/52/master.m3u8"}}}
        ]}});
        assert_eq!(playlist_urls(&body).unwrap(), ["http://h/52/v.f230.m3u8?t=1", "http://h/52/master.m3u8"]);
        assert_eq!(playlist_urls(&serde_json::json!({"eventType": "ProcedureStateChanged", "data": {}})), None);
    }
}
