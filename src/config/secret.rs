//! Secrets in the configuration: read from files, checked for characters a signed request
//! cannot carry, serialised as a digest, and never echoed in a message.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// A secret as its SHA-256, so [`super::restart_needed`] sees it change without holding it.
pub(super) fn digest<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    use sha2::Digest as _;
    let hash = secret.as_ref().map(|k| format!("{:x}", sha2::Sha256::digest(k.expose_secret().as_bytes())));
    hash.serialize(s)
}

pub(super) fn read_secret(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err("the file is empty".into());
    }
    printable(key)?;
    Ok(SecretString::from(key.to_string()))
}

/// Credentials go into signed parameters and HTTP headers, which take printable ASCII
/// only. The message says where the bad character is, never what the value is.
pub(super) fn printable(value: &str) -> Result<(), String> {
    match value.chars().position(|c| !c.is_ascii() || c.is_ascii_control()) {
        None => Ok(()),
        Some(i) => Err(format!(
            "has a control or non-ASCII character at position {}; copy the value again from the console (Access management > API keys), without line breaks, tabs or typographic characters",
            i + 1
        )),
    }
}

/// What a secret must be, said without its value.
const NOT_TEXT: &str = "must be text; the value given is not shown. A value that reads as a number or a boolean is read as one: quote it (in TOML: key = \"...\"; in the environment: VOD_EVENTD_...='\"...\"'), or put it in a file and name that file instead (e.g. vod.secret_key_file)";

/// A secret from text only: any other type is refused without naming the value (serde's own
/// message would quote a secret that reads as a number: `found unsigned int 98765...`).
struct Text;

impl serde::de::Visitor<'_> for Text {
    type Value = SecretString;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretString, E> {
        Ok(SecretString::from(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretString, E> {
        Ok(SecretString::from(v))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_char<E: serde::de::Error>(self, _: char) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretString, E> {
        Err(E::custom(NOT_TEXT))
    }
}

/// A secret of any type.
#[derive(Debug)]
struct Secret(SecretString);

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text).map(Secret)
    }
}

/// `deserialize_with` for an optional secret: see [`Text`].
pub(crate) fn optional<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(<Option<Secret> as serde::Deserialize>::deserialize(d)?.map(|s| s.0))
}

/// `deserialize_with` for a list of secrets: see [`Text`].
pub(crate) fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(<Vec<Secret> as serde::Deserialize>::deserialize(d)?.into_iter().map(|s| s.0).collect())
}

/// `deserialize_with` for a map of texts that may be secrets (request headers, which carry
/// tokens): see [`Text`].
pub(crate) fn text_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    let map = <std::collections::BTreeMap<String, Secret> as serde::Deserialize>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0.expose_secret().to_string())).collect())
}
