//! Times on the command line: reading `--since`/`--until` (`now`, a duration ago, RFC 3339)
//! and writing stored Unix ms as RFC 3339. Shared by the history commands (events,
//! deliveries, ranges, keys, handlers), so none of them imports another for it.

/// `now`, `2h` (ago) or an RFC 3339 time, as Unix ms; `flag` names the option in errors.
pub(super) fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    if text == "now" {
        return Ok(crate::store::now_ms());
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(crate::store::now_ms() - ago.as_millis() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| {
        anyhow::anyhow!(
            "{flag} `{text}` is neither `now`, a duration like 2h or 30m (ago) nor an RFC 3339 time like 2026-11-24T08:00:00Z"
        )
    })
}

/// Unix ms as an RFC 3339 UTC time with milliseconds (the number itself if out of range).
pub(super) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
