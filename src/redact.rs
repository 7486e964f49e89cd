//! What of a URL may be shown. Every URL that reaches a log line, a metric label, an
//! attempt record, `status` or an error message goes through [`url`]: it keeps the
//! scheme, host, port and path, and hides the userinfo, the query and the fragment,
//! where receivers and proxies put their tokens.
//!
//! A connection URL (the PostgreSQL `store.url`), whose user, database and query
//! parameters (`sslmode`, ...) an operator needs to see, goes through [`connection_url`]
//! instead: it drops the userinfo's password and hides the value of every password-like
//! query parameter (`password`, `sslpassword`, `pass`, `secret`, `token`, ...).

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

/// `text` without the userinfo's password and with the value of every password-like
/// query parameter ([`is_secret_parameter`]) replaced by `***`; the user, host, port, path,
/// other parameters and their order are kept, and the fragment dropped. A libpq
/// `key=value` string has the same values hidden; other text goes through [`url`].
pub fn connection_url(text: &str) -> String {
    let parsed = reqwest::Url::parse(text).ok().filter(|u| u.has_host());
    let Some(mut parsed) = parsed else {
        if !text.contains("://") && text.contains('=') {
            return key_values(text);
        }
        return url(text);
    };
    let _ = parsed.set_password(None);
    if let Some(query) = parsed.query() {
        let kept: Vec<String> = query
            .split('&')
            .map(|part| {
                let name = part.split_once('=').map_or(part, |(name, _)| name);
                if is_secret_parameter(&percent_encoding::percent_decode_str(name).decode_utf8_lossy()) {
                    format!("{name}=***")
                } else {
                    part.to_string()
                }
            })
            .collect();
        parsed.set_query(Some(&kept.join("&")));
    }
    parsed.set_fragment(None);
    parsed.to_string()
}

/// A libpq `key=value ...` string with secret values hidden (a quoted value is hidden whole).
fn key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].rsplit(char::is_whitespace).next().unwrap_or_default().to_string();
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        let value_len = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(rest.len(), |end| end + 2),
            None => rest.find(char::is_whitespace).unwrap_or(rest.len()),
        };
        if is_secret_parameter(&name) {
            out.push_str("***");
        } else {
            out.push_str(&rest[..value_len]);
        }
        rest = &rest[value_len..];
    }
    out.push_str(rest);
    out
}

/// A query parameter whose value is a secret: its name (case-insensitive) contains
/// `pass`, `pwd`, `secret`, `token`, `auth`, `credential` or `signature`, or is `key`,
/// `apikey`, `api_key` or `sig`.
pub fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "auth", "credential", "signature"].iter().any(|part| name.contains(part))
        || matches!(name.as_str(), "key" | "apikey" | "api_key" | "sig")
}

#[cfg(test)]
mod tests {
    use super::{connection_url, url};

    #[test]
    fn connection_urls_keep_what_operators_need_and_hide_every_password() {
        assert_eq!(
            connection_url("postgresql://vod:s3cret@db:5432/vod?sslmode=require"),
            "postgresql://vod@db:5432/vod?sslmode=require"
        );
        assert_eq!(
            connection_url(
                "postgresql://vod@db/vod?sslmode=verify-full&password=s3cret&application_name=x&Password=A%26B"
            ),
            "postgresql://vod@db/vod?sslmode=verify-full&password=***&application_name=x&Password=***"
        );
        for name in ["sslpassword", "pass", "passwd", "pwd", "secret", "token", "access_token", "apikey", "pass%77ord"]
        {
            let shown = connection_url(&format!("postgres://db/vod?{name}=TOPSECRET&sslmode=disable"));
            assert!(!shown.contains("TOPSECRET"), "{name}: {shown}");
            assert!(shown.ends_with("=***&sslmode=disable"), "{name}: {shown}");
        }
        assert_eq!(connection_url("postgres://db/vod#password=x"), "postgres://db/vod");
        assert_eq!(connection_url("host=db password=x dbname=vod"), "host=db password=*** dbname=vod");
        assert_eq!(connection_url("host=db password='a b' user=v"), "host=db password=*** user=v");
        assert_eq!(connection_url("not a url?password=x"), "not a url?password=***");
    }

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
