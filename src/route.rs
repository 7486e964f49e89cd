//! Routing: which handlers an event goes to, by its type, by the source it was pulled
//! from and by an optional filter over its content (`when`, see [`crate::filter`]).
//! Patterns are exact names or globs (`"*"`, `"*Complete"`, `"prod-*"`); a route
//! without `sources` takes every source. One event may go to several handlers, each once.
//! The daemon's own alert events (source [`ALERT_SOURCE`]) only go to routes with an event
//! pattern that names their prefix (`"vod-eventd.*"`, `"vod-eventd.delivery.dead"`): a
//! catch-all `"*"` keeps getting Tencent's events only.
//! A filter that cannot be evaluated for an event does not match it; the first such
//! failure of each route is logged (one line per route, not per event), and every one
//! is returned to the caller to count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use tracing::warn;

use crate::alerts::ALERT_SOURCE;
use crate::event::ReceivedEvent;
use crate::filter::{EventView, Filter};

/// The prefix an event pattern starts with to select alert events.
const ALERT_PREFIX: &str = "vod-eventd.";

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Event type names or globs.
    pub events: Vec<String>,
    /// Source names or globs (none: every source).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// Handler names (keys of `[handlers]`).
    pub handlers: Vec<String>,
    /// A CEL expression over the event (`event`, `event_type`, `source`); the route only
    /// takes events for which it is true.
    #[serde(default)]
    pub when: Option<String>,
}

/// Compiled routes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    events: Vec<GlobMatcher>,
    /// The patterns that select alert events (those starting with [`ALERT_PREFIX`]).
    alert_events: Vec<GlobMatcher>,
    /// `None`: every source.
    sources: Option<Vec<GlobMatcher>>,
    handlers: Vec<String>,
    when: Option<Filter>,
    /// Set once this route's filter failed and said so in the log.
    failure_logged: Arc<AtomicBool>,
}

/// A route that does not compile: its key (`routes[2].when`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RouteError {
    /// The dotted key of the bad value.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Where an event goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// Handler names, in route order, without repeats.
    pub handlers: Vec<String>,
    /// The routes (`routes[i]`) whose filter could not be evaluated for the event.
    pub filter_errors: Vec<String>,
}

fn compile(patterns: &[String], key: &str) -> Result<Vec<GlobMatcher>, RouteError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| RouteError { key: key.to_string(), message: format!("`{p}`: {e}") })
        })
        .collect()
}

impl Router {
    /// Compiles routes; an invalid glob or filter is an error naming its key.
    pub fn new(routes: &[RouteConfig]) -> Result<Router, RouteError> {
        let mut compiled = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let when = route.when.as_deref().map(Filter::compile).transpose().map_err(|e| RouteError {
                key: format!("routes[{i}].when"),
                message: format!("{e}; see https://github.com/google/cel-spec for the syntax"),
            })?;
            let alert_patterns: Vec<String> =
                route.events.iter().filter(|p| p.starts_with(ALERT_PREFIX)).cloned().collect();
            compiled.push(Route {
                events: compile(&route.events, &format!("routes[{i}].events"))?,
                alert_events: compile(&alert_patterns, &format!("routes[{i}].events"))?,
                sources: route.sources.as_deref().map(|s| compile(s, &format!("routes[{i}].sources"))).transpose()?,
                handlers: route.handlers.clone(),
                when,
                failure_logged: Arc::default(),
            });
        }
        Ok(Router { routes: compiled })
    }

    /// Whether any route selects alert events (a pattern starting with `vod-eventd.`):
    /// without one, alerts are never raised.
    pub fn takes_alerts(&self) -> bool {
        self.routes.iter().any(|r| !r.alert_events.is_empty())
    }

    /// The handlers for an event of `event_type` from `source`, in route order, without
    /// repeats, ignoring filters.
    pub fn handlers_for(&self, event_type: &str, source: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for route in self.routes.iter().filter(|r| r.selects(event_type, source)) {
            add_handlers(&mut out, &route.handlers);
        }
        out
    }

    /// Where `event` goes: the routes that select its type and source and whose filter, if
    /// any, is true for it. The event is converted for the filters at most once.
    pub fn route(&self, event: &ReceivedEvent) -> Routed {
        let mut routed = Routed::default();
        let mut view: Option<EventView<'static>> = None;
        for (i, route) in self.routes.iter().enumerate() {
            if !route.selects(&event.event_type, &event.source) {
                continue;
            }
            if let Some(filter) = &route.when {
                let view = view.get_or_insert_with(|| EventView::new(event));
                match filter.matches(view) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        if !route.failure_logged.swap(true, Ordering::Relaxed) {
                            warn!(route = %format!("routes[{i}]"), %error, event_type = %event.event_type, "A route filter could not be evaluated; the route does not take such events. Logged once per route; vod_eventd_route_filter_errors_total counts them all. Guard the fields with has(...) if they are optional.");
                        }
                        routed.filter_errors.push(format!("routes[{i}]"));
                        continue;
                    }
                }
            }
            add_handlers(&mut routed.handlers, &route.handlers);
        }
        routed
    }
}

impl Route {
    fn selects(&self, event_type: &str, source: &str) -> bool {
        let events = if source == ALERT_SOURCE { &self.alert_events } else { &self.events };
        self.sources.as_ref().is_none_or(|s| s.iter().any(|m| m.is_match(source)))
            && events.iter().any(|m| m.is_match(event_type))
    }
}

fn add_handlers(out: &mut Vec<String>, handlers: &[String]) {
    for h in handlers {
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(events: &[&str], handlers: &[&str]) -> RouteConfig {
        RouteConfig {
            events: events.iter().map(|s| s.to_string()).collect(),
            handlers: handlers.iter().map(|s| s.to_string()).collect(),
            sources: None,
            when: None,
        }
    }

    #[test]
    fn routes_select_sources_by_name_or_glob() {
        let prod = RouteConfig { sources: Some(vec!["prod-*".into()]), ..route(&["*"], &["prod-hook"]) };
        let router = Router::new(&[prod, route(&["*"], &["all"])]).unwrap();
        assert_eq!(router.handlers_for("NewFileUpload", "prod-eu"), ["prod-hook", "all"]);
        assert_eq!(router.handlers_for("NewFileUpload", "test"), ["all"]);
        let bad = RouteConfig { sources: Some(vec!["[x".into()]), ..route(&["*"], &["h"]) };
        assert_eq!(Router::new(&[bad]).unwrap_err().key, "routes[0].sources");
    }

    #[test]
    fn exact_names_globs_and_fan_out_without_repeats() {
        let router = Router::new(&[
            route(&["*"], &["internal"]),
            route(&["ProcedureStateChanged"], &["keys", "ingest"]),
            route(&["*Complete"], &["internal", "ingest"]),
        ])
        .unwrap();
        assert_eq!(router.handlers_for("ProcedureStateChanged", "default"), ["internal", "keys", "ingest"]);
        assert_eq!(router.handlers_for("TranscodeComplete", "default"), ["internal", "ingest"]);
        assert_eq!(router.handlers_for("NewFileUpload", "default"), ["internal"]);
        assert!(Router::default().handlers_for("NewFileUpload", "default").is_empty());
    }

    #[test]
    fn a_bad_glob_is_named() {
        let err = Router::new(&[route(&["[oops"], &["x"])]).unwrap_err();
        assert!(err.key == "routes[0].events" && err.message.contains("[oops"), "{err}");
    }

    #[test]
    fn alert_events_only_go_to_routes_that_name_them() {
        assert!(!Router::new(&[route(&["*"], &["all"])]).unwrap().takes_alerts(), "`*` takes no alerts");
        let router = Router::new(&[route(&["*"], &["all"]), route(&["vod-eventd.*"], &["pager"])]).unwrap();
        assert!(router.takes_alerts());
        assert_eq!(router.handlers_for("vod-eventd.delivery.dead", ALERT_SOURCE), ["pager"]);
        assert_eq!(router.handlers_for("NewFileUpload", "default"), ["all"]);
    }

    #[test]
    fn a_filter_selects_events_and_a_failing_one_does_not_match() {
        let finished = RouteConfig { when: Some(r#"event.data.status == "FINISH""#.into()), ..route(&["*"], &["f"]) };
        let router = Router::new(&[finished, route(&["*"], &["all"])]).unwrap();
        let event = |content: &str| ReceivedEvent::from_content(content, crate::config::ApiVersion::V2);
        let done = event(r#"{"eventType":"ProcedureStateChanged","data":{"status":"FINISH"}}"#);
        assert_eq!(router.route(&done).handlers, ["f", "all"]);
        let other = event(r#"{"eventType":"ProcedureStateChanged","data":{"status":"PROCESSING"}}"#);
        assert_eq!(router.route(&other), Routed { handlers: vec!["all".into()], filter_errors: vec![] });
        let odd = event(r#"{"eventType":"NewFileUpload"}"#);
        assert_eq!(
            router.route(&odd),
            Routed { handlers: vec!["all".into()], filter_errors: vec!["routes[0]".into()] }
        );
        let bad = RouteConfig { when: Some("event.data.status ==".into()), ..route(&["*"], &["f"]) };
        let err = Router::new(&[route(&["*"], &["all"]), bad]).unwrap_err();
        assert_eq!(err.key, "routes[1].when");
        assert!(err.message.starts_with("line 1, column "), "{err}");
    }
}
