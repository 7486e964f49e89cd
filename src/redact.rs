//! What of a URL may be shown. Every URL that reaches a log line, a metric label, an
//! attempt record, `status` or an error message goes through [`url`]: it keeps the
//! scheme, host, port and path, and hides the userinfo, the query and the fragment,
//! where receivers and proxies put their tokens.

/// `text` with its userinfo replaced by `***`, its query by `?***`, and no fragment.
/// Text that is not a URL is cut the same way (at `?` or `#`, up to the last `@`).
pub fn url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(mut url) if url.has_host() => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_password(None);
                let _ = url.set_username("***");
            }
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.set_fragment(None);
            url.to_string()
        }
        _ => {
            let head = text.split(['?', '#']).next().unwrap_or_default();
            let (scheme, rest) = head.split_once("://").map_or(("", head), |(s, r)| (s, r));
            let rest = rest.rsplit_once('@').map_or_else(|| rest.to_string(), |(_, host)| format!("***@{host}"));
            let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
            let cut = if head.len() < text.len() { "?***" } else { "" };
            format!("{scheme}{rest}{cut}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn userinfo_query_and_fragment_are_hidden() {
        assert_eq!(
            url("https://alice:s3cret@hooks.example.com:8443/vod/in?token=abc&x=1#frag"),
            "https://***@hooks.example.com:8443/vod/in?***"
        );
        assert_eq!(url("http://127.0.0.1:9/v2/index.php"), "http://127.0.0.1:9/v2/index.php");
        assert_eq!(url("ftp://bob:pw@x y/?k=v"), "ftp://***@x y/?***");
        assert_eq!(url("not a url?token=abc"), "not a url?***");
    }
}
