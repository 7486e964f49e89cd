//! What `config check` and `run` say about secrets beyond the config's own validation:
//!
//! - [`placeholders`]: the example's placeholder values (`replace-me`, the example
//!   SecretId, ...) are refused, naming the key: they are never real credentials, and
//!   Tencent's refusal would come later and say less.
//! - [`inline_secrets`]: a secret written inline in a config file that every local user can
//!   read gets a warning naming the key, the file, its mode and where the secret belongs.
//! - [`crate::config::credential::no_secret_key`] and [`crate::config::credential::credential_loaded`]: the words for a missing secret key. The
//!   packaged unit loads the credential `vod-secret-key` from `/etc/vod-eventd/secret-key`
//!   with a `SetCredential=` default of [`crate::config::credential::NOT_LOADED`]`PATH`, so a missing file starts the
//!   daemon (systemd only fails a `LoadCredential=` that has no default), which then names
//!   the file to write instead of systemd's `243/CREDENTIALS`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use figment::providers::{Format as _, Toml};
use figment::value::Value;
use figment::Figment;
use secrecy::ExposeSecret as _;

use crate::config::credential::{PACKAGED_CREDENTIAL, PACKAGED_KEY_FILE};
use crate::config::{Config, ConfigError, ConfigIssue, SourcesSetting, VodConfig};

/// Values the example config and the README use in place of real ones.
pub const PLACEHOLDERS: [&str; 5] =
    ["replace-me", "YOUR-SECRET-KEY", "AKIDexampleexampleexampleexample", "AKID...", "whsec_..."];

/// The keys holding a placeholder value, each with the fix. `path` is the config file.
pub fn placeholders(config: &Config, path: &Path) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut check = |prefix: &str, vod: &VodConfig| {
        let issue = |key: &str, what: &str| ConfigIssue {
            key: format!("{prefix}.{key}"),
            message: format!("is the example's placeholder; {what}"),
            source: Some(path.display().to_string()),
        };
        if is_placeholder(&vod.secret_id) {
            issues.push(issue("secret_id", "set your API SecretId (console: Access management > API keys)"));
        }
        if vod.secret_key.as_ref().is_some_and(|k| is_placeholder(k.expose_secret())) {
            let fix = format!(
                "an inline secret_key wins over the credential and secret_key_file, so delete the line and put your API secret key in {PACKAGED_KEY_FILE} (mode 0600; loaded as the systemd credential `{PACKAGED_CREDENTIAL}`)"
            );
            issues.push(issue("secret_key", &fix));
        } else if vod.secret_key().is_ok_and(|k| is_placeholder(k.expose_secret())) {
            let fix = format!(
                "the key's file ({PACKAGED_KEY_FILE} as the credential `{PACKAGED_CREDENTIAL}`, or the file secret_key_file names) holds it; write your API secret key there"
            );
            issues.push(issue("secret_key", &fix));
        }
        if vod.token.as_ref().is_some_and(|t| is_placeholder(t.expose_secret())) {
            issues.push(issue("token", "set the STS token, or remove the line"));
        }
    };
    check("vod", &config.vod);
    if let SourcesSetting::List(_) = &config.sources {
        for (i, source) in config.sources().iter().enumerate() {
            check(&format!("sources[{i}]"), &source.vod);
        }
    }
    for (name, handler) in &config.handlers {
        if let crate::handler::HandlerConfig::Webhook(hook) = handler {
            if hook.secret.iter().chain(&hook.secrets).any(|s| is_placeholder(s.expose_secret())) {
                issues.push(ConfigIssue {
                    key: format!("handlers.{name}.secret"),
                    message: "is the example's placeholder; set the receiver's signing secret (whsec_ and base64), or use secret_file".into(),
                    source: Some(path.display().to_string()),
                });
            }
        }
    }
    issues.dedup_by(|a, b| a.key == b.key);
    issues
}

/// [`placeholders`] as an error (exit 78, as any config error), or `Ok` when there is none.
pub fn refuse_placeholders(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let issues = placeholders(config, path);
    match issues.is_empty() {
        true => Ok(()),
        false => Err(ConfigError { path: path.to_path_buf(), issues }),
    }
}

fn is_placeholder(value: &str) -> bool {
    PLACEHOLDERS.contains(&value.trim())
}

/// One line per secret written inline in `path` when every local user can read the file:
/// the key, the file, its mode and where the secret belongs instead. Empty when the file
/// cannot be read or is not readable by others.
pub fn inline_secrets(path: &Path) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(path) else { return Vec::new() };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 == 0 {
        return Vec::new();
    }
    let file = Figment::from(Toml::file_exact(path));
    let has = |key: &str| file.find_value(key).is_ok();
    let mut found: Vec<(String, String)> = Vec::new();
    let key_home = format!(
        "the systemd credential `{PACKAGED_CREDENTIAL}` from {PACKAGED_KEY_FILE} (mode 0600), or a file of mode 0600 named by secret_key_file"
    );
    for (key, home) in [("vod.secret_key", key_home.as_str()), ("vod.token", "the environment of the service only")] {
        if has(key) {
            found.push((key.to_string(), home.to_string()));
        }
    }
    if let Ok(Value::Array(_, sources)) = file.find_value("sources") {
        for (i, source) in sources.iter().enumerate() {
            for key in ["secret_key", "token"] {
                if source.find_ref(key).is_some() {
                    found.push((format!("sources[{i}].{key}"), "a file of mode 0600 named by secret_key_file".into()));
                }
            }
        }
    }
    if let Ok(Value::Dict(_, handlers)) = file.find_value("handlers") {
        for (name, handler) in &handlers {
            // A broker handler's password in its URL (amqp://user:password@host/).
            let broker = handler
                .find_ref("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| matches!(t, "amqp" | "nats" | "redis"));
            let url = handler.find_ref("url").and_then(|u| u.as_str()).and_then(|u| reqwest::Url::parse(u).ok());
            if broker && url.is_some_and(|u| u.password().is_some()) {
                found.push((
                    format!("handlers.{name}.url"),
                    "a file of mode 0600 named by handlers.NAME.password_file, the URL keeping only the user".into(),
                ));
            }
            for key in ["secret", "secrets"] {
                if handler.find_ref(key).is_some() {
                    found.push((
                        format!("handlers.{name}.{key}"),
                        "a file of mode 0600 named by secret_file (passed as a systemd credential under the packaged unit)"
                            .into(),
                    ));
                }
            }
        }
    }
    if has("keyserver.token_secrets") {
        found.push((
            "keyserver.token_secrets".into(),
            format!(
                "a file of mode 0600 named by keyserver.token_secret_file, or the systemd credential `{}`",
                crate::config::TOKEN_SECRETS_CREDENTIAL
            ),
        ));
    }
    let url_password = file
        .find_value("store.url")
        .ok()
        .and_then(|v| v.into_string())
        .and_then(|url| reqwest::Url::parse(&url).ok())
        .is_some_and(|url| url.password().is_some());
    if url_password {
        found.push((
            "store.url".into(),
            "store.password_file, or the systemd credential `vod-store-password` (its password, not the URL's)".into(),
        ));
    }
    found
        .into_iter()
        .map(|(key, home)| {
            format!(
                "{key} holds a secret inline in {}, which every local user can read (mode {mode:04o}); delete it from the file and put it in {home}",
                path.display()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::credential::{credential_loaded, no_secret_key};
    use secrecy::SecretString;

    #[test]
    fn the_unit_default_names_the_file_and_a_real_key_passes() {
        let err = credential_loaded(SecretString::from("not-loaded:/etc/vod-eventd/secret-key"), "vod-secret-key")
            .unwrap_err();
        assert!(err.contains("/etc/vod-eventd/secret-key is missing") && err.contains("install -m 0600"), "{err}");
        let key = credential_loaded(SecretString::from("k3y"), "vod-secret-key").unwrap();
        assert_eq!(key.expose_secret(), "k3y");
    }

    #[test]
    fn a_missing_key_names_the_packaged_file_or_the_credential() {
        assert!(no_secret_key("vod-secret-key").contains("write it to /etc/vod-eventd/secret-key"));
        let other = no_secret_key("mine");
        assert!(other.contains("LoadCredential=mine:/path/to/key") && other.contains("secret_key_file"), "{other}");
    }

    #[test]
    fn a_broker_password_in_a_readable_url_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[handlers.q]\ntype = \"amqp\"\nurl = \"amqp://u:pw-inline@h/\"\nrouting_key = \"k\"\n[handlers.r]\ntype = \"redis\"\nurl = \"redis://h/\"\nstream = \"s\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warnings = inline_secrets(&path);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("handlers.q.url") && !warnings[0].contains("pw-inline"), "{warnings:?}");
    }
}
