//! Route filters: a route's `when`, a CEL expression over a stored event, compiled once when
//! the config is loaded and evaluated once per event, when the event is stored and routed.
//! The expression sees `event` (the event body as received: v2 `{eventType, data}` or v3
//! `{EventType, <Type>Event}`), `event_type` and `source`. A syntax error is reported with
//! its line and column; an evaluation error (a missing key, a type mismatch, a non-bool
//! result) is returned to the caller, which counts it and does not match the route.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};

use crate::event::ReceivedEvent;

/// A compiled `when` expression.
#[derive(Clone)]
pub struct Filter {
    program: Arc<Program>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

/// A `when` expression that does not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    /// Line of the expression, from 1.
    pub line: usize,
    /// Column in that line, from 1.
    pub column: usize,
    /// The parser's message.
    pub message: String,
}

impl Filter {
    /// Compiles an expression; a syntax error names its position.
    pub fn compile(text: &str) -> Result<Filter, SyntaxError> {
        match Program::compile(text) {
            Ok(program) => Ok(Filter { program: Arc::new(program) }),
            Err(errors) => {
                let first = errors.errors.first();
                let (line, column) = first.map_or((1, 0), |e| e.pos);
                Err(SyntaxError {
                    line: line.max(1) as usize,
                    column: column.max(1) as usize,
                    message: first.map_or_else(|| "cannot be parsed".to_string(), |e| e.msg.clone()),
                })
            }
        }
    }

    /// Evaluates the expression for one event: `Ok(true)` matches, `Err` says why it
    /// could not be evaluated (the event then does not match).
    pub fn matches(&self, event: &EventView<'_>) -> Result<bool, String> {
        match self.program.execute(&event.context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("gave {:?}, not true or false", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// An event as the expressions see it, built once and shared by every route's filter.
pub struct EventView<'a> {
    context: Context<'a>,
}

impl EventView<'_> {
    /// The variables for `event`: its body (parsed; a double-encoded body is unwrapped),
    /// its type and its source.
    pub fn new(event: &ReceivedEvent) -> EventView<'static> {
        let parsed: serde_json::Value = serde_json::from_str(&event.content).unwrap_or(serde_json::Value::Null);
        let body = match parsed {
            serde_json::Value::String(inner) => serde_json::from_str(&inner).unwrap_or(serde_json::Value::Null),
            other => other,
        };
        let mut context = Context::default();
        context.add_variable_from_value("event", to_cel(&body));
        context.add_variable_from_value("event_type", event.event_type.clone());
        context.add_variable_from_value("source", event.source.clone());
        EventView { context }
    }
}

/// JSON as CEL: integers as `int` (or `uint` above `i64`), other numbers as `double`.
fn to_cel(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        J::Object(members) => {
            let map: HashMap<Key, Value> =
                members.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiVersion;

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{}/crates/vod-emulator/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn eval(expr: &str, content: &str, api: ApiVersion) -> Result<bool, String> {
        let event = ReceivedEvent::from_content(content, api);
        Filter::compile(expr).unwrap().matches(&EventView::new(&event))
    }

    #[test]
    fn both_api_shapes_are_filtered() {
        let v2 = fixture("ProcedureStateChanged.json");
        let v3 = fixture("v3/ProcedureStateChanged.json");
        assert_eq!(eval(r#"event.data.status == "FINISH""#, &v2, ApiVersion::V2), Ok(true));
        assert_eq!(eval("event.data.errCode != 0", &v2, ApiVersion::V2), Ok(false));
        assert_eq!(eval("event.ProcedureStateChangeEvent.ErrCode != 0", &v3, ApiVersion::V3), Ok(false));
        assert_eq!(eval("event.ProcedureStateChangeEvent.ErrCode == 0", &v3, ApiVersion::V3), Ok(true));
        let typed = r#"event_type == "ProcedureStateChanged" && source == "default""#;
        assert_eq!(eval(typed, &v3, ApiVersion::V3), Ok(true));
        assert_eq!(eval("has(event.data)", &v3, ApiVersion::V3), Ok(false));
    }

    #[test]
    fn a_missing_key_or_a_non_bool_is_an_error() {
        let v2 = fixture("ProcedureStateChanged.json");
        assert!(eval("event.ProcedureStateChangeEvent.ErrCode != 0", &v2, ApiVersion::V2).is_err());
        assert!(eval("event.data.status", &v2, ApiVersion::V2).unwrap_err().contains("not true or false"));
    }

    #[test]
    fn a_syntax_error_names_its_position() {
        let err = Filter::compile("event.data.status == ").unwrap_err();
        assert_eq!(err.line, 1, "{err}");
        let err = Filter::compile("event.data.status ==\n  && true").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        let err = Filter::compile("1 + )").unwrap_err();
        assert_eq!((err.line, err.column), (1, 5), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        #[test]
        fn any_text_compiles_or_gives_a_position(text in "[a-z.()\\[\\]{}\"'=!<>&|+*/%?:, 0-9\\n-]{0,40}") {
            match Filter::compile(&text) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.line >= 1 && e.column >= 1),
            }
        }
    }
}
