//! The Grafana dashboard (`contrib/grafana/vod-eventd.json`) and the Prometheus alert rules
//! (`contrib/prometheus/alerts.yml`) query only what a running daemon exports: the metric and
//! label names are parsed out of every PromQL expression (and the legends and annotations that
//! name labels) and looked up in a real `/metrics` scrape, taken after events flowed, pulls
//! and confirms failed and deliveries happened.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vod_emulator::{EmulatorConfig, FaultKind, Faults};

use crate::receiver::Receiver;
use crate::support::*;

/// PromQL words that are not metric names where they stand bare: operators, modifiers,
/// number words, and the aggregations (which may stand before `by (…)` rather than `(`).
const KEYWORDS: &str = "and or unless bool offset inf nan atan2 sum min max avg group stddev stdvar count \
                        count_values bottomk topk quantile limitk limit_ratio";
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &str = "by without on ignoring group_left group_right";
/// Labels Prometheus itself puts on every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// The metric and label names one PromQL expression reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Parses `expr`: metric names are identifiers standing bare or before `{` or `[`; label
/// names stand before a matcher's operator inside `{…}`, or in `by (…)` and the like. Not
/// names: functions and aggregations (an identifier before `(`), keywords, strings, numbers,
/// durations, `$variables`.
fn promql_names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Names::default();
    // Inside `{…}`, `[…]` or a label list, until this closing character.
    let mut inside: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
            continue;
        }
        if inside == Some(c) {
            inside = None;
        } else if inside.is_none() && (c == '{' || c == '[') {
            inside = Some(if c == '{' { '}' } else { ']' });
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, or a number or duration (`0.95`, `1e3`, `5m`).
            while i + 1 < chars.len() && (ident(chars[i + 1]) || chars[i + 1] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i + 1 < chars.len() && ident(chars[i + 1]) {
                i += 1;
            }
            let word: String = chars[start..=i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let next = chars[i + 1..].iter().position(|c| !c.is_whitespace()).map(|p| (i + 1 + p, chars[i + 1 + p]));
            let next_char = next.map(|(_, c)| c);
            match inside {
                Some('}') if matches!(next_char, Some('=' | '!')) => _ = names.labels.insert(word),
                Some(')') => _ = names.labels.insert(word),
                Some(_) => {}
                None if LABEL_LISTS.split_whitespace().any(|k| k == lower) => {
                    if let Some((open, '(')) = next {
                        (i, inside) = (open, Some(')'));
                    }
                }
                None if next_char != Some('(') && !KEYWORDS.split_whitespace().any(|k| k == lower) => {
                    _ = names.metrics.insert(word)
                }
                None => {}
            }
        }
        i += 1;
    }
    names
}

/// Label names in Go templates: `{{label}}` (Grafana legends) and `$labels.label` (rule annotations).
fn template_labels(text: &str) -> BTreeSet<String> {
    let word = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let legends = text.split("{{").skip(1).filter_map(|s| s.split_once("}}")).map(|(inner, _)| inner.trim());
    let legends = legends.filter(|inner| inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).map(word);
    let annotations = text.split("$labels.").skip(1).map(word);
    legends.chain(annotations).filter(|l| !l.is_empty()).collect()
}

#[test]
fn names_are_parsed_out_of_promql_and_templates() {
    let expr = r#"histogram_quantile(0.95, sum by (handler, le) (rate(a_bucket{handler=~"x|y", q="b{c}"}[$__rate_interval])))
        / ignoring(le) group_left (kind) (b offset 5m) > bool 1e3 unless on (instance) c_total{code!="}"}
        or sum(d[5m:1m]) without (code) and time() - e > 3600 or label_replace(f, "dst", "$1", "src", "(.*)")"#;
    let names = promql_names(expr);
    assert_eq!(names.metrics.iter().collect::<Vec<_>>(), ["a_bucket", "b", "c_total", "d", "e", "f"]);
    assert_eq!(names.labels.iter().collect::<Vec<_>>(), ["code", "handler", "instance", "kind", "le", "q"]);
    let text = "{{instance}} {{ $labels.source }} {{ $value | humanize }} {{handler}} x";
    assert_eq!(template_labels(text).iter().collect::<Vec<_>>(), ["handler", "instance", "source"]);
}

/// Every PromQL expression in the dashboard: each `expr`, and each templating query
/// (`label_values(selector, label)`, read as `selector by (label)`).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        ("query" | "definition", serde_json::Value::String(q)) if q.starts_with("label_values(") => {
                            // `label_values(selector, label)`: the selector, with the label as a `by` list.
                            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
                            let (selector, label) = inner.rsplit_once(',').unwrap_or((inner, ""));
                            out.push(format!("{} by ({label})", selector.trim()));
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Every rule's `expr` in a Prometheus rules file: inline (`expr: …`) or a block scalar
/// (`expr: >-` or `|` followed by lines indented deeper than the key).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((indent, value)) = line.split_once("expr:").filter(|(i, _)| i.trim().is_empty()) else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with(['>', '|']) {
            out.push(value.to_string());
            continue;
        }
        let block = lines[n + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent.len())
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        out.push(block);
    }
    out
}

/// The sample names a scrape exports: every sample line's name, and the names each `# TYPE`
/// family stands for even without samples yet (a counter's `_total`, a histogram's
/// `_bucket`/`_sum`/`_count`, an info's `_info`).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(family) = line.strip_prefix("# TYPE ") {
            let (name, kind) = family.split_once(' ').unwrap_or((family, ""));
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    names
}

/// The label names on any sample of a scrape.
fn exported_labels(scrape: &str) -> BTreeSet<String> {
    let samples = scrape.lines().filter(|l| !l.starts_with('#'));
    let label_sets = samples.filter_map(|l| l.split_once('{')).filter_map(|(_, rest)| rest.rsplit_once('}'));
    let pairs = label_sets.flat_map(|(labels, _)| labels.split("\",").map(str::to_string).collect::<Vec<_>>());
    pairs.filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim_start_matches(',').to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_use_only_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("contrib/grafana/vod-eventd.json")).unwrap()).unwrap();
    let rules = std::fs::read_to_string(root.join("contrib/prometheus/alerts.yml")).unwrap();
    let (dashboard_exprs, rule_exprs) = (dashboard_exprs(&dashboard), rule_exprs(&rules));
    assert!(dashboard_exprs.len() >= 15, "the dashboard's queries were not found: {dashboard_exprs:?}");
    assert_eq!(rule_exprs.len(), 4, "the rules' expressions were not found: {rule_exprs:?}");

    // Every family gets samples: a duplicate (one content twice in a pull), pull errors and
    // confirm failures (HTTP 500 on each action in turn; confirms fail past the 1 s handle
    // TTL, so handles expire and their events come back after the 2 s visibility timeout),
    // then deliveries once faults stop.
    let emu = emulator(EmulatorConfig { visibility: Duration::from_secs(2), ..fast_emulator_config() }).await;
    let receiver = Receiver::start().await;
    let twice = r#"{"version":"4.0","eventType":"NewFileUpload","data":{"fileId":"TWICE"}}"#;
    emu.enqueue(twice);
    emu.enqueue(twice);
    emu.enqueue_generated(20);
    let fail = |action: &str| Faults {
        rate: 1.0,
        kinds: vec![FaultKind::Http500],
        actions: vec![action.to_string()],
        ..Faults::default()
    };
    emu.set_faults(fail("PullEvent"));
    let port = free_port();
    let extra = format!(
        "[[routes]]\nevents = [\"*\"]\nhandlers = [\"hook\"]\n[handlers.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
         [pull]\nbackoff_max = \"300ms\"\n[confirm]\nmax_delay = \"100ms\"\nhandle_ttl = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        receiver.url()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    scrape_until(port, "a pull error", |m| m.contains("vod_eventd_pull_errors_total{")).await;
    emu.set_faults(fail("ConfirmEvent"));
    scrape_until(port, "a confirm failure and an expired handle", |m| {
        m.contains("vod_eventd_confirm_failures_total{") && m.contains("vod_eventd_handles_expired_total{")
    })
    .await;
    emu.set_faults(Faults::default());
    eventually(Duration::from_secs(60), "events confirmed and delivered", || {
        emu.stats().queue.outstanding == 0
            && daemon.store().is_some_and(|s| delivery_states(&s).get("done") == Some(&21))
    })
    .await;
    let scrape = scrape_until(port, "the deliveries counted", |m| {
        m.contains("vod_eventd_deliveries_total{handler=\"hook\",outcome=\"done\"} 21")
    })
    .await;
    let exported = exported_names(&scrape);
    for sample in
        ["vod_eventd_events_duplicate_total", "vod_eventd_pull_to_confirm_seconds_bucket", "vod_eventd_build_info"]
    {
        assert!(scrape.lines().any(|l| l.starts_with(sample)), "no {sample} sample:\n{scrape}");
    }

    let labels: BTreeSet<String> =
        exported_labels(&scrape).into_iter().chain(TARGET_LABELS.map(String::from)).collect();
    assert!(labels.contains("handler") && labels.contains("le"), "{labels:?}");

    let mut used = Names::default();
    let files = [("contrib/grafana/vod-eventd.json", &dashboard_exprs), ("contrib/prometheus/alerts.yml", &rule_exprs)];
    for (file, exprs) in files {
        for expr in exprs {
            let names = promql_names(expr);
            assert!(!names.metrics.is_empty(), "{file}: no metric in `{expr}`");
            for name in &names.metrics {
                assert!(
                    exported.contains(name),
                    "{file}: `{name}` is not exported by the daemon (in `{expr}`)\n{scrape}"
                );
            }
            for label in &names.labels {
                assert!(labels.contains(label), "{file}: no exported series has the label `{label}` (in `{expr}`)");
            }
            used.metrics.extend(names.metrics);
            used.labels.extend(names.labels);
        }
    }
    let templated = template_labels(&dashboard.to_string()).into_iter().chain(template_labels(&rules));
    for label in templated {
        assert!(labels.contains(&label), "a legend or annotation names the label `{label}`, which no series has");
        used.labels.insert(label);
    }
    assert!(used.metrics.len() >= 15 && used.labels.len() >= 6, "{used:?}");
}

/// Scrapes `/metrics` until `cond` holds, every 50 ms; panics with `what` after 30 s.
async fn scrape_until(port: u16, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(), // not listening yet
        };
        if cond(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out after 30 s waiting for {what} in /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
