//! Routing: which handlers an event goes to, by its type and by the source it was pulled
//! from. Patterns are exact names or globs (`"*"`, `"*Complete"`, `"prod-*"`); a route
//! without `sources` takes every source. One event may go to several handlers, each once.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

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
}

/// Compiled routes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    events: Vec<GlobMatcher>,
    /// `None`: every source.
    sources: Option<Vec<GlobMatcher>>,
    handlers: Vec<String>,
}

fn compile(patterns: &[String], key: &str) -> Result<Vec<GlobMatcher>, String> {
    patterns
        .iter()
        .map(|p| Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| format!("{key}: `{p}`: {e}")))
        .collect()
}

impl Router {
    /// Compiles routes; an invalid glob is an error naming it.
    pub fn new(routes: &[RouteConfig]) -> Result<Router, String> {
        let mut compiled = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            compiled.push(Route {
                events: compile(&route.events, &format!("routes[{i}].events"))?,
                sources: route.sources.as_deref().map(|s| compile(s, &format!("routes[{i}].sources"))).transpose()?,
                handlers: route.handlers.clone(),
            });
        }
        Ok(Router { routes: compiled })
    }

    /// The handlers for an event of `event_type` from `source`, in route order, without repeats.
    pub fn handlers_for(&self, event_type: &str, source: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for route in &self.routes {
            let source_ok = route.sources.as_ref().is_none_or(|s| s.iter().any(|m| m.is_match(source)));
            if source_ok && route.events.iter().any(|m| m.is_match(event_type)) {
                for h in &route.handlers {
                    if !out.contains(h) {
                        out.push(h.clone());
                    }
                }
            }
        }
        out
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
        }
    }

    #[test]
    fn routes_select_sources_by_name_or_glob() {
        let prod = RouteConfig { sources: Some(vec!["prod-*".into()]), ..route(&["*"], &["prod-hook"]) };
        let router = Router::new(&[prod, route(&["*"], &["all"])]).unwrap();
        assert_eq!(router.handlers_for("NewFileUpload", "prod-eu"), ["prod-hook", "all"]);
        assert_eq!(router.handlers_for("NewFileUpload", "test"), ["all"]);
        let bad = RouteConfig { sources: Some(vec!["[x".into()]), ..route(&["*"], &["h"]) };
        assert!(Router::new(&[bad]).unwrap_err().contains("routes[0].sources"));
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
        assert!(err.contains("routes[0].events") && err.contains("[oops"), "{err}");
    }
}
