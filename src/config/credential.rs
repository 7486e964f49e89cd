//! The secret key as the packaged systemd unit hands it over: the credential's name and
//! file, the marker its `SetCredential=` default carries when `LoadCredential=` found no
//! file, and the errors that say what to write where.

use secrecy::{ExposeSecret as _, SecretString};

/// The credential the packaged unit loads the secret key as.
pub const PACKAGED_CREDENTIAL: &str = "vod-secret-key";
/// The file the packaged unit loads it from.
pub const PACKAGED_KEY_FILE: &str = "/etc/vod-eventd/secret-key";
/// How the packaged unit's `SetCredential=` default for `vod-secret-key` begins; the path
/// of the file `LoadCredential=` found missing follows.
pub const NOT_LOADED: &str = "not-loaded:";

/// The command that puts the key in place.
fn install_command(file: &str) -> String {
    format!("sudo install -m 0600 /dev/stdin {file} <<< 'YOUR-SECRET-KEY'")
}

/// The error for no secret key at all, naming what to write where.
pub fn no_secret_key(credential: &str) -> String {
    let credential_hint = if credential == PACKAGED_CREDENTIAL {
        format!(
            "write it to {PACKAGED_KEY_FILE} ({}), which the packaged unit loads as the systemd credential `{credential}`",
            install_command(PACKAGED_KEY_FILE)
        )
    } else {
        format!("load the systemd credential `{credential}` (LoadCredential={credential}:/path/to/key)")
    };
    format!(
        "no secret key: {credential_hint}; or name a file of mode 0600 holding it in vod.secret_key_file (vod.secret_key inline only in a config no other user can read)"
    )
}

/// The credential `name` as read: the key, or, when it is the unit's [`NOT_LOADED`]
/// default, the error naming the file its `LoadCredential=` did not find.
pub fn credential_loaded(key: SecretString, name: &str) -> Result<SecretString, String> {
    let Some(file) = key.expose_secret().strip_prefix(NOT_LOADED) else { return Ok(key) };
    Err(format!(
        "no secret key: the systemd credential `{name}` was not loaded because {file} is missing; write the key there ({}), then `systemctl restart vod-eventd`",
        install_command(file)
    ))
}
