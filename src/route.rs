//! Routing: which handlers an event type goes to. Patterns are exact names or globs
//! (`"*"`, `"*Complete"`); one event may go to several handlers, each once.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Event type names or globs.
    pub events: Vec<String>,
    /// Handler names (keys of `[handlers]`).
    pub handlers: Vec<String>,
}

/// Compiled routes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(Vec<GlobMatcher>, Vec<String>)>,
}

impl Router {
    /// Compiles routes; an invalid glob is an error naming it.
    pub fn new(routes: &[RouteConfig]) -> Result<Router, String> {
        let mut compiled = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let matchers = route
                .events
                .iter()
                .map(|p| {
                    Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| format!("routes[{i}].events: `{p}`: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push((matchers, route.handlers.clone()));
        }
        Ok(Router { routes: compiled })
    }

    /// The handlers for `event_type`, in route order, without repeats.
    pub fn handlers_for(&self, event_type: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (matchers, handlers) in &self.routes {
            if matchers.iter().any(|m| m.is_match(event_type)) {
                for h in handlers {
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
        }
    }

    #[test]
    fn exact_names_globs_and_fan_out_without_repeats() {
        let router = Router::new(&[
            route(&["*"], &["internal"]),
            route(&["ProcedureStateChanged"], &["keys", "ingest"]),
            route(&["*Complete"], &["internal", "ingest"]),
        ])
        .unwrap();
        assert_eq!(router.handlers_for("ProcedureStateChanged"), ["internal", "keys", "ingest"]);
        assert_eq!(router.handlers_for("TranscodeComplete"), ["internal", "ingest"]);
        assert_eq!(router.handlers_for("NewFileUpload"), ["internal"]);
        assert!(Router::default().handlers_for("NewFileUpload").is_empty());
    }

    #[test]
    fn a_bad_glob_is_named() {
        let err = Router::new(&[route(&["[oops"], &["x"])]).unwrap_err();
        assert!(err.contains("routes[0].events") && err.contains("[oops"), "{err}");
    }
}
