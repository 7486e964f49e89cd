//! The Grafana dashboard (`contrib/grafana/vod-eventd.json`) and the Prometheus alert rules
//! (`contrib/prometheus/alerts.yml`) query only metrics that a running daemon exports: the
//! metric names are parsed out of every PromQL expression and looked up in a real `/metrics`
//! scrape taken after events flowed and a delivery happened.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vod_emulator::{FaultKind, Faults};

use crate::receiver::Receiver;
use crate::support::*;

/// PromQL words that are not metric names where they stand bare: operators, modifiers,
/// number words, and the aggregations (which may stand before `by (…)` rather than `(`).
const KEYWORDS: [&str; 22] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression reads: identifiers standing bare or before `{` or
/// `[`; not functions or aggregations (an identifier before `(`), keywords, label names (in
/// `{…}` and in `by (…)` and the like), strings, numbers, durations or `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    // Inside `{…}`, `[…]` or a label list, until this closing character: no metric names.
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
            if inside.is_none() {
                if LABEL_LISTS.contains(&lower.as_str()) {
                    if let Some((open, '(')) = next {
                        (i, inside) = (open, Some(')'));
                    }
                } else if next.map(|(_, c)| c) != Some('(') && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_parsed_out_of_promql() {
    let expr = r#"histogram_quantile(0.95, sum by (handler, le) (rate(a_bucket{handler=~"x|y", q="b{c}"}[$__rate_interval])))
        / ignoring(le) group_left (handler) (b offset 5m) > bool 1e3 unless on (instance) c_total
        or sum(d[5m:1m]) without (code) and time() - e > 3600 or label_replace(f, "dst", "$1", "src", "(.*)")"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_bucket", "b", "c_total", "d", "e", "f"]);
}

/// Every PromQL expression in the dashboard: each `expr`, and each templating query's
/// metric (`label_values(metric, label)`).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        ("query" | "definition", serde_json::Value::String(q)) if q.starts_with("label_values(") => {
                            let inner = q.trim_start_matches("label_values(");
                            out.push(inner.split(',').next().unwrap_or(inner).trim().to_string());
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
    // confirm failures (HTTP 500 on each action in turn), then deliveries once faults stop.
    let emu = emulator(fast_emulator_config()).await;
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
         [pull]\nbackoff_max = \"300ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        receiver.url()
    );
    let daemon = TestDaemon::start(&emu.endpoint(), &extra).await;
    scrape_until(port, "a pull error", |m| m.contains("vod_eventd_pull_errors_total{code=\"http_500\"}")).await;
    emu.set_faults(fail("ConfirmEvent"));
    scrape_until(port, "a confirm failure", |m| m.contains("vod_eventd_confirm_failures_total{")).await;
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

    let mut used = BTreeSet::new();
    for (source, exprs) in
        [("contrib/grafana/vod-eventd.json", &dashboard_exprs), ("contrib/prometheus/alerts.yml", &rule_exprs)]
    {
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{source}: no metric in `{expr}`");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{source}: `{name}` is not exported by the daemon (in `{expr}`)\n{scrape}"
                );
                used.insert(name);
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
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
