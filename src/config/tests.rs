//! The configuration's tests: loading, defaults, and every refusal naming its key.

use std::time::Duration;

use figment::providers::Serialized;
use secrecy::ExposeSecret;
use vod_protocol::SignatureMethod;

use super::*;

fn parse(toml: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::new().merge(Toml::string(toml)), Path::new("test.toml"))
}

const MINIMAL: &str = "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k\"\n";

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.endpoint(), "https://vod.api.qcloud.com/v2/index.php");
    assert_eq!(c.region().as_deref(), Some("gz"));
    assert_eq!(c.rate_limit_per_minute(), 1000);
    let v3 = parse(&MINIMAL.replace("[vod]\n", "[vod]\napi = \"v3\"\n")).unwrap();
    assert_eq!(
        (v3.endpoint().as_str(), v3.region(), v3.rate_limit_per_minute()),
        ("https://vod.tencentcloudapi.com/", None, 6000)
    );
    assert_eq!(c.signature_method(), Some(SignatureMethod::HmacSha256));
    assert_eq!(c.vod.request_timeout, Duration::from_secs(10));
    assert_eq!(c.confirm.max_delay, Duration::from_secs(1));
    assert_eq!(c.confirm.batch_size, 16);
    assert_eq!(c.store.path, PathBuf::from("/var/lib/vod-eventd/events.db"));
}

#[test]
fn example_config_is_valid() {
    // The example carries no secret key (the packaged unit loads it as a credential).
    let example = include_str!("../../config.example.toml").replacen("[vod]\n", "[vod]\nsecret_key = \"k\"\n", 1);
    let c = parse(&example).unwrap();
    assert_eq!(c.confirm.max_delay, ConfirmConfig::default().max_delay);
}

#[test]
fn example_routes_and_handlers_are_valid_once_uncommented() {
    let example = include_str!("../../config.example.toml").replacen("[vod]\n", "[vod]\nsecret_key = \"k\"\n", 1);
    let start = example.find("# [[routes]]").unwrap();
    let uncommented: String = example[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .filter(|l| !l.contains("key_dir"))
        .map(|l| l.replace("whsec_...", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
        .filter(|l| !l.starts_with("header_files"))
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse(&format!("{}\n{uncommented}", &example[..start])).unwrap();
    assert_eq!(c.routes.len(), 4);
    assert!(c.routes[2].when.is_some(), "the filter example compiles");
    assert_eq!(c.handlers.len(), 3);
    assert_eq!(c.dispatch.retry_schedule, crate::retry::default_schedule());
    let keyserver = c.keyserver.expect("the [keyserver] example");
    assert_eq!((keyserver.path.as_str(), keyserver.allow_origins.len()), ("/key", 1));
}

#[test]
fn a_handler_rate_must_look_like_a_rate() {
    let handler = |extra: &str| {
        format!("{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"shell\"\ncommand = [\"true\"]\n{extra}\n")
    };
    for bad in ["50", "50/h", "0/s", "x/s"] {
        let err = parse(&handler(&format!("rate = \"{bad}\""))).unwrap_err();
        assert!(err.to_string().contains("`handlers.h.rate`: must look like 50/s or 300/m"), "{bad}: {err}");
    }
    let config = parse(&handler("rate = \"300/m\"\npause_after = 20\nprobe_interval = \"1s\"")).unwrap();
    let h = &config.handlers["h"];
    assert_eq!(h.rate(), Some(crate::handler::Rate { count: 300, per: Duration::from_secs(60) }));
    assert_eq!(h.breaker(), (20, Duration::from_secs(1)));
    let err = parse(&handler("probe_interval = \"0s\"")).unwrap_err();
    assert!(err.to_string().contains("`handlers.h.probe_interval`: must be at least 10ms"), "{err}");
}

#[test]
fn store_url_selects_postgres_and_its_mistakes_are_named_without_the_password() {
    let ok = parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://vod:pw@db:5432/vod?sslmode=require\"\n")).unwrap();
    assert_eq!(ok.store.postgres_url(), Some("postgresql://vod:pw@db:5432/vod?sslmode=require"));
    // The size cap and the check at start mean something on PostgreSQL too.
    let capped = "[store]\nurl = \"postgresql://vod@db/vod\"\nmax_size_mb = 5\ncheck_at_start = true\n";
    assert_eq!(parse(&format!("{MINIMAL}{capped}")).unwrap().store.max_size_mb, 5);
    let text = format!("{MINIMAL}[store]\nurl = \"mysql://vod:hunter2@db/vod\"\npool_size = 0\n");
    let err = parse(&text).unwrap_err();
    let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
    for key in ["store.url", "store.pool_size"] {
        assert!(keys.contains(&key), "{key} not reported in {keys:?}");
    }
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://vod@db/vod?sslmode=on\"\n")).unwrap_err();
    assert!(err.to_string().contains("verify-full"), "{err}");
    let err = parse(&format!("{MINIMAL}[store]\npassword_file = \"/nonexistent\"\n")).unwrap_err();
    assert!(err.to_string().contains("only used with store.url"), "{err}");
    let err = parse(&format!("{MINIMAL}[node]\nname = \"a/b\"\n")).unwrap_err();
    assert!(err.to_string().contains("`node.name`"), "{err}");
    let pinned = "[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"shell\"\ncommand = [\"true\"]\nhosts = [\"b\"]\n";
    let err = parse(&format!("{MINIMAL}[node]\nname = \"a\"\n{pinned}")).unwrap_err();
    assert!(err.to_string().contains("`handlers.h.hosts`: does not name this daemon (node.name = a)"), "{err}");
    assert!(parse(&format!("{MINIMAL}[store]\nurl = \"postgresql://v@db/v\"\n[node]\nname = \"a\"\n{pinned}")).is_ok());
}

#[test]
fn routes_must_name_defined_handlers() {
    let err = parse(&format!("{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"nope\"]\n")).unwrap_err();
    assert!(err.to_string().contains("`routes[0].handlers`: `nope` is not defined"), "{err}");
}

#[test]
fn settings_that_break_at_run_time_are_named() {
    let text = "[vod]\napi = \"v3\"\nsecret_id = \"AKID\\u0007x\"\nsecret_key = \"kéy\"\ntoken = \"t\\n\"\nrequest_timeout = \"5s\"\n\
                [confirm]\nmax_delay = \"1s\"\nhandle_ttl = \"1500ms\"\n\
                [[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\", \"gone\"]\n\
                [handlers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"0s\"\n";
    let err = parse(text).unwrap_err();
    let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "vod.secret_id",
        "vod.secret_key",
        "vod.token",
        "vod.request_timeout",
        "confirm.handle_ttl",
        "handlers.hook.timeout",
        "routes[0].handlers",
    ] {
        assert!(keys.contains(&key), "{key} not reported in {keys:?}");
    }
    let text = err.to_string();
    assert!(!text.contains("kéy") && !text.contains("AKID"), "values are never echoed: {text}");
    assert!(text.contains("position 5"), "{text}");
    assert!(parse(&format!("{MINIMAL}request_timeout = \"2s\"\nlong_poll_hold = \"1s\"\n")).is_ok());
}

#[test]
fn a_reload_names_every_setting_it_cannot_apply() {
    let old = parse(MINIMAL).unwrap();
    let reloadable = parse(&format!(
        "{MINIMAL}[store]\nmax_size_mb = 5\n[log]\nlevel = \"debug\"\n[dispatch]\nmax_age = \"1d\"\n\
         [[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"drm\"\n"
    ))
    .unwrap();
    assert_eq!(restart_needed(&old, &reloadable), Vec::<String>::new());
    let restart = parse(
        "[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"k2\"\n[shutdown]\ndrain_timeout = \"5s\"\n\
         [store]\nbusy_timeout = \"1s\"\nprune_interval = \"1m\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    assert_eq!(
        restart_needed(&old, &restart),
        ["log.format", "shutdown.drain_timeout", "store.busy_timeout", "store.prune_interval", "vod.secret_key"]
    );
}

proptest::proptest! {
    #[test]
    fn any_text_as_a_config_gives_a_config_or_named_issues(text in ".{0,300}") {
        if let Err(e) = parse(&text) {
            proptest::prop_assert!(!e.issues.is_empty());
        }
    }

    #[test]
    fn any_section_value_soup_is_handled(lines in proptest::collection::vec("(vod|store|confirm|pull|log|dispatch)\\.[a-z_]{1,16} = (\"[a-z0-9:/.]{0,12}\"|[0-9]{1,6}|true|\\[\\])", 0..8)) {
        let mut text = String::from(MINIMAL);
        for line in &lines {
            let (section, rest) = line.split_once('.').unwrap();
            text.push_str(&format!("[{section}]\n{rest}\n"));
        }
        let _ = parse(&text);
    }
}

#[test]
fn every_problem_is_named_by_key() {
    let err = parse(
        "[vod]\nsecret_id = \"\"\nsignature_method = \"md5\"\nendpoint = \"ftp://x\"\n[confirm]\nbatch_size = 40\n",
    )
    .unwrap_err();
    let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
    for key in ["vod.endpoint", "vod.secret_id", "vod.signature_method", "vod.secret_key", "confirm.batch_size"] {
        assert!(keys.contains(&key), "{key} not reported in {keys:?}");
    }
    assert!(err.to_string().lines().all(|l| l.starts_with("config error: test.toml: `")));
}

#[test]
fn missing_and_unknown_keys_are_named() {
    let text = parse("[vod]\nsecret_key = \"k\"\n").unwrap_err().to_string();
    assert!(text.contains("`vod.secret_id`: is required"), "{text}");
    assert!(text.contains("VOD_EVENTD_VOD__SECRET_ID"), "{text}");
    let text = parse("[vod]\nsecret_id = \"x\"\nsecret_key = \"k\"\nsecretkey = \"x\"\n").unwrap_err().to_string();
    assert!(text.contains("`vod.secretkey`: is not a known key"), "{text}");
}

#[test]
fn secret_key_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "s3cret\n").unwrap();
    let fig = Figment::new()
        .merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\n"))
        .merge(Serialized::default("vod.secret_key_file", &file));
    let c = from_figment(fig.clone(), Path::new("t")).unwrap();
    assert_eq!(c.secret_key().unwrap().expose_secret(), "s3cret");
    std::fs::write(&file, "s3cr\x01t\n").unwrap();
    let err = from_figment(fig, Path::new("t")).unwrap_err().to_string();
    assert!(err.contains("`vod.secret_key`") && err.contains("position 5"), "a control character: {err}");
    let fig =
        Figment::new().merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\nsecret_key_file = \"/nonexistent/key\"\n"));
    let err = from_figment(fig, Path::new("t")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/key"), "{err}");
}

#[test]
fn sources_take_unset_keys_from_vod_and_vod_alone_is_the_default_source() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.sources().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [DEFAULT_SOURCE]);
    let c = parse(&format!(
        "{MINIMAL}sub_app_id = 1\n[[sources]]\nname = \"prod-a\"\nsub_app_id = 10\n\
         [[sources]]\nname = \"prod-b\"\napi = \"v3\"\n\
         [[sources]]\nname = \"other\"\nsecret_id = \"AKID2\"\nsecret_key = \"k2\"\nsub_app_id = 10\n"
    ))
    .unwrap();
    let sources = c.sources();
    assert_eq!(sources.iter().map(|s| s.vod.sub_app_id).collect::<Vec<_>>(), [Some(10), Some(1), Some(10)]);
    assert_eq!(sources[1].vod.endpoint(), "https://vod.tencentcloudapi.com/", "another api: Tencent's endpoint for it");
    assert_eq!(sources[1].vod.secret_key().unwrap().expose_secret(), "k");
    assert_eq!(
        (sources[2].vod.secret_id.as_str(), sources[2].vod.secret_key().unwrap().expose_secret()),
        ("AKID2", "k2")
    );
    assert!(matches!(parse(&format!("sources = \"all\"\n{MINIMAL}")).unwrap().sources, SourcesSetting::All));
}

/// The refusal of `MINIMAL` plus `text`, checked to contain each of `expected`.
fn refused_with(text: &str, expected: &[&str]) -> String {
    let err = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
    for expected in expected {
        assert!(err.contains(expected), "{expected} not in {err}");
    }
    err
}

#[test]
fn source_mistakes_are_named_with_the_fix() {
    refused_with(
        "[[sources]]\nname = \"a\"\nsub_app_id = 1\n[[sources]]\nname = \"a\"\nsub_app_id = 2\n\
         [[sources]]\nname = \"b c\"\nsub_app_id = 1\n[[sources]]\nname = \"d\"\nsecret_id = \"AKID9\"\n\
         [[sources]]\nname = \"e\"\nsub_app_id = 3\nregion = \"\"\n[[sources]]\nname = \"vod-eventd\"\nsub_app_id = 4\n",
        &[
            "`sources[5].name`: `vod-eventd` is reserved for the daemon's own alert events",
            "`sources[1].name`: `a` is already the name of sources[0]",
            "`sources[2].name`: `b c` is not a valid name",
            "`sources[2].sub_app_id`: sources[0] already pulls sub_app_id 1 with the same secret_id",
            "`sources[3].secret_key`: sources[3] sets its own secret_id",
            "`sources[4].region`: is empty",
        ],
    );
    // One SecretId and API share one limiter: their rates must agree.
    let err = refused_with(
        "rate_limit_per_minute = 600\n[[sources]]\nname = \"a\"\nsub_app_id = 1\n\
         [[sources]]\nname = \"b\"\nsub_app_id = 2\nrate_limit_per_minute = 300\n\
         [[sources]]\nname = \"c\"\nsub_app_id = 3\napi = \"v3\"\nrate_limit_per_minute = 300\n\
         [[sources]]\nname = \"d\"\nsub_app_id = 4\nsecret_id = \"AKID2\"\nsecret_key = \"k2\"\nrate_limit_per_minute = 300\n",
        &[
            "`sources[1].rate_limit_per_minute`: 300 (sources[1].rate_limit_per_minute) differs from the 600 of sources[0] (vod.rate_limit_per_minute), which uses the same secret_id and api",
            "give them the same value (or set vod.rate_limit_per_minute once",
        ],
    );
    assert!(
        !err.contains("sources[2]") && !err.contains("sources[3]"),
        "another api or SecretId: its own limiter: {err}"
    );
    let c = parse(&format!(
        "{MINIMAL}[[sources]]\nname = \"a\"\nsub_app_id = 1\nrate_limit_per_minute = 300\n\
         [[sources]]\nname = \"b\"\nsub_app_id = 2\nrate_limit_per_minute = 300\n"
    ))
    .unwrap();
    assert!(c.sources().iter().all(|s| s.vod.rate_limit_per_minute() == 300));
    let err = parse(&format!("sources = \"some\"\n{MINIMAL}")).unwrap_err().to_string();
    assert!(err.contains("`sources`") && err.contains("is not \"all\""), "{err}");
    let err = parse(&format!("{MINIMAL}[[sources]]\nname = \"a\"\nsecretid = \"x\"\n")).unwrap_err().to_string();
    assert!(err.contains("sources") && err.contains("secretid"), "{err}");
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let c = parse("[vod]\nsecret_id = \"AKID1\"\nsecret_key = \"very-secret-value\"\ntoken = \"sts-token-value\"\n")
        .unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("very-secret-value") && !debug.contains("sts-token-value"), "{debug}");
}

#[test]
fn an_unknown_key_in_a_handler_section_is_refused_naming_the_known_ones() {
    let text = format!(
        "{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\npause_afer = 3\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("`handlers.h.pause_afer`: is not a known key (expected one of: url, secret, secrets"),
        "{err}"
    );
    assert!(err.contains("pause_after, probe_interval, rate, hosts"), "the shared keys are named too: {err}");
}

#[test]
fn a_secret_that_reads_as_a_number_or_a_boolean_is_refused_without_its_value() {
    // In a file.
    for (value, shown) in [("98765432109876", "98765432109876"), ("true", "true"), ("1.5e3", "1500")] {
        for key in ["secret_key", "token"] {
            let other = if key == "token" { "secret_key = \"k\"\n" } else { "" };
            let err = parse(&format!("[vod]\nsecret_id = \"AKID1\"\n{other}{key} = {value}\n")).unwrap_err();
            assert_eq!(err.issues[0].key, format!("vod.{key}"));
            let text = err.to_string();
            assert!(!text.contains(shown) && !text.contains(value), "{value} echoed: {text}");
            assert!(text.contains("must be text; the value given is not shown"), "{text}");
        }
    }
    let hook = format!(
        "{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", 4242424242]\n"
    );
    let text = parse(&hook).unwrap_err().to_string();
    assert!(!text.contains("4242424242") && text.contains("handlers.h"), "{text}");
    let header = hook.replace("secrets = [", "headers = { X-Api-Key = 4242424242 }\n#");
    let text = parse(&header).unwrap_err().to_string();
    assert!(!text.contains("4242424242") && text.contains("handlers.h"), "a header may hold a token: {text}");
    let text = parse(&format!("{MINIMAL}[[sources]]\nname = \"a\"\nsecret_id = \"AKID2\"\nsecret_key = 31337313373\n"))
        .unwrap_err()
        .to_string();
    assert!(!text.contains("31337313373") && text.contains("sources"), "{text}");
    // In the environment (a prefix of this test's own, so no other test sees the variables).
    std::env::set_var("VOD_EVENTD_T16_VOD__SECRET_KEY", "98765432109876");
    std::env::set_var("VOD_EVENTD_T16_VOD__TOKEN", "false");
    let figment = Figment::new()
        .merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\n"))
        .merge(Env::prefixed("VOD_EVENTD_T16_").split("__"));
    let err = from_figment(figment, Path::new("t")).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("98765432109876") && !text.contains("false"), "{text}");
    let issue = err.issues.iter().find(|i| i.key == "vod.secret_key").unwrap_or_else(|| panic!("{text}"));
    assert!(issue.source.as_deref().is_some_and(|s| s.contains("VOD_EVENTD_T16_")), "{issue}");
    // Quoted, the same digits are a key.
    std::env::set_var("VOD_EVENTD_T16_VOD__SECRET_KEY", "\"98765432109876\"");
    std::env::remove_var("VOD_EVENTD_T16_VOD__TOKEN");
    let figment = Figment::new()
        .merge(Toml::string("[vod]\nsecret_id = \"AKID1\"\n"))
        .merge(Env::prefixed("VOD_EVENTD_T16_").split("__"));
    let config = from_figment(figment, Path::new("t")).unwrap();
    assert_eq!(config.secret_key().unwrap().expose_secret(), "98765432109876");
    std::env::remove_var("VOD_EVENTD_T16_VOD__SECRET_KEY");
}

#[test]
fn a_remote_postgres_host_without_a_checked_certificate_is_warned_about() {
    let warnings = |url: &str| parse(&format!("{MINIMAL}[store]\nurl = \"{url}\"\n")).unwrap().warnings();
    for url in [
        "postgresql://vod:pw@db.example/vod",
        "postgresql://vod@db.example:5432/vod?sslmode=prefer",
        "postgresql://vod@10.0.0.5/vod?sslmode=require",
        "postgresql://vod@db.example/vod?sslmode=disable",
        "postgresql://vod@localhost/vod?host=db.example&sslmode=require",
    ] {
        let w = warnings(url);
        assert_eq!(w.len(), 1, "{url}: {w:?}");
        assert!(w[0].starts_with("store.url: ") && w[0].contains("sslmode=verify-full"), "{w:?}");
        assert!(!w[0].contains("pw"), "the password is never shown: {w:?}");
    }
    for url in [
        "postgresql://vod@db.example/vod?sslmode=verify-full",
        "postgresql://vod@db.example/vod?sslmode=verify-ca",
        "postgresql://vod@localhost/vod?sslmode=require",
        "postgresql://vod@127.0.0.1/vod",
        "postgresql://vod@[::1]:5432/vod?sslmode=disable",
        "postgresql://vod@db.example/vod?host=/run/postgresql",
    ] {
        assert_eq!(warnings(url), Vec::<String>::new(), "{url}");
    }
    assert!(parse(MINIMAL).unwrap().warnings().is_empty(), "SQLite: nothing to warn about");
}

#[test]
fn handler_keys_are_set_from_the_environment_too() {
    std::env::set_var("VOD_EVENTD_T4_HANDLERS__H__PAUSE_AFTER", "5");
    std::env::set_var("VOD_EVENTD_T4_HANDLERS__H__CONCURRENCY", "9");
    std::env::set_var("VOD_EVENTD_T4_HANDLERS__H__TIMEOUT", "2s");
    let toml = format!("{MINIMAL}[[routes]]\nevents = [\"*\"]\nhandlers = [\"h\"]\n[handlers.h]\ntype = \"shell\"\ncommand = [\"true\"]\n");
    let figment = Figment::new().merge(Toml::string(&toml)).merge(Env::prefixed("VOD_EVENTD_T4_").split("__"));
    let config = from_figment(figment, Path::new("t")).unwrap();
    for name in ["PAUSE_AFTER", "CONCURRENCY", "TIMEOUT"] {
        std::env::remove_var(format!("VOD_EVENTD_T4_HANDLERS__H__{name}"));
    }
    let h = &config.handlers["h"];
    assert_eq!((h.breaker().0, h.concurrency(), h.attempt_timeout()), (5, 9, Duration::from_secs(2)));
}

#[test]
fn keyserver_section_defaults_and_refusals() {
    assert!(parse(MINIMAL).unwrap().keyserver.is_none(), "no section, no key server");
    let c = parse(&format!("{MINIMAL}[keyserver]\n")).unwrap();
    let k = c.keyserver.unwrap();
    assert_eq!((k.listen.to_string(), k.path.as_str(), k.auth), ("127.0.0.1:8700".into(), "/key", KeyAuth::Token));
    assert_eq!(k.max_age, Duration::from_secs(3600));
    assert!(k.secrets().is_err(), "no secret configured");

    let keys = |toml: &str| -> Vec<String> {
        parse(&format!("{MINIMAL}[keyserver]\n{toml}"))
            .err()
            .map_or(Vec::new(), |e| e.issues.into_iter().map(|i| format!("{}: {}", i.key, i.message)).collect())
    };
    assert!(keys("auth = \"none\"\n").is_empty(), "none on loopback is allowed");
    let open = keys("auth = \"none\"\nlisten = \"0.0.0.0:8700\"\n");
    assert!(open.len() == 1 && open[0].starts_with("keyserver.auth: `none` serves every key"), "{open:?}");
    assert!(keys("auth = \"none\"\nlisten = \"0.0.0.0:8700\"\ntrust_proxy = true\n").is_empty());
    assert!(keys("auth = \"cookie\"\n").is_empty());
    assert!(keys("auth = \"cookies\"\n")[0].starts_with("keyserver.auth"));
    assert!(keys("auth = \"cookie\"\ncookie = \"a b\"\n")[0].starts_with("keyserver.cookie"));
    let short = keys("token_secrets = [\"0123456789012345678901234567890123\", \"short\"]\n");
    assert!(short.len() == 1 && short[0].starts_with("keyserver.token_secrets[1]: is shorter"), "{short:?}");
    assert!(!short[0].contains("short\""), "the value is not shown");
    let origins = keys("allow_origins = [\"https://a.example\", \"*\", \"https://b.example/\", \"https://c.example/x\", \"ftp://d.example\", \"http://e.example:8080\"]\n");
    let named: Vec<&str> = origins.iter().map(|o| o.split(':').next().unwrap()).collect();
    assert_eq!(
        named,
        [
            "keyserver.allow_origins[1]",
            "keyserver.allow_origins[2]",
            "keyserver.allow_origins[3]",
            "keyserver.allow_origins[4]"
        ]
    );
    assert!(keys("path = \"key\"\n")[0].starts_with("keyserver.path"));
    assert!(keys("path = \"/key?x\"\n")[0].starts_with("keyserver.path"));
    let both = keys("token_secrets = [\"0123456789012345678901234567890123\"]\ntoken_secret_file = \"/x\"\n");
    assert!(both[0].starts_with("keyserver.token_secrets: set token_secrets or token_secret_file"), "{both:?}");
    assert!(keys("max_connections = 0\n")[0].starts_with("keyserver.max_connections"));
    assert!(keys("metrics_listen = \"127.0.0.1:8700\"\n")[0].starts_with("keyserver.metrics_listen"));
    assert!(keys("metrics_listen = \"127.0.0.1:9465\"\n").is_empty());
    assert!(keys("tls_cert = \"/c.pem\"\n")[0].starts_with("keyserver.tls_cert: set both"));
    assert!(keys("tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n").is_empty(), "read at start, not by config check");
}

#[test]
fn keyserver_secrets_come_from_a_file_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets");
    let a = "a".repeat(MIN_TOKEN_SECRET_LEN);
    let b = "b".repeat(MIN_TOKEN_SECRET_LEN + 4);
    std::fs::write(&file, format!("# the signing one first\n{a}\n\n{b}\n")).unwrap();
    let c = parse(&format!("{MINIMAL}[keyserver]\ntoken_secret_file = \"{}\"\n", file.display())).unwrap();
    let secrets = c.keyserver.unwrap().secrets().unwrap();
    assert_eq!(secrets.iter().map(|s| s.expose_secret().to_string()).collect::<Vec<_>>(), [a, b]);
    // The packaged unit's stand-in when its file is missing is never taken for a secret.
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(
        credentials.path().join(TOKEN_SECRETS_CREDENTIAL),
        "not-loaded:/etc/vod-eventd/keyserver-token-secrets-which-is-long",
    )
    .unwrap();
    let section = KeyserverConfig::default();
    let e = section.secrets_in(Some(credentials.path())).unwrap_err();
    assert!(
        e.contains("was not loaded because /etc/vod-eventd/keyserver-token-secrets-which-is-long is missing"),
        "{e}"
    );
    let good = "c".repeat(MIN_TOKEN_SECRET_LEN);
    std::fs::write(credentials.path().join(TOKEN_SECRETS_CREDENTIAL), format!("{good}\n")).unwrap();
    assert_eq!(section.secrets_in(Some(credentials.path())).unwrap()[0].expose_secret(), good);
    std::fs::write(&file, "tooshort\n").unwrap();
    let c = parse(&format!("{MINIMAL}[keyserver]\ntoken_secret_file = \"{}\"\n", file.display())).unwrap();
    let e = c.keyserver.unwrap().secrets().unwrap_err();
    assert!(e.contains("secret 1 is shorter") && !e.contains("tooshort"), "{e}");
}
