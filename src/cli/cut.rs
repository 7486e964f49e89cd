//! Lists that say when they are cut: `events list`, `deliveries list` and `keys list` show
//! `--limit` rows (50 by default). One row more than that is fetched; when it exists, the
//! list is cut and a note on standard error says so and names the flags that show the rest
//! (`--limit N`, `--all`; `--limit 0` is `--all`). With `--json` the note is written only
//! when standard error is a terminal, so a script's output stays clean; standard output
//! never carries it.

use std::io::IsTerminal as _;

/// `--limit` and `--all`, as given.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// `--limit` (0: no limit).
    pub limit: u32,
    /// `--all`.
    pub all: bool,
}

impl Limit {
    /// How many rows are shown at most; `None` for every one.
    fn shown(self) -> Option<u32> {
        (!self.all && self.limit > 0).then_some(self.limit)
    }

    /// How many rows to ask the store for: one more than are shown, to know whether
    /// there are more.
    pub fn fetch(self) -> u32 {
        self.shown().map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// Cuts `rows` to the limit; true if some were cut.
    pub fn cut<T>(self, rows: &mut Vec<T>) -> bool {
        match self.shown() {
            Some(n) if rows.len() > n as usize => {
                rows.truncate(n as usize);
                true
            }
            _ => false,
        }
    }

    /// After the rows are written: when [`Limit::cut`] cut some (`cut`), says so on
    /// standard error (see the module's doc for when). `what` names the rows (`events`).
    pub fn say(self, cut: bool, shown: usize, what: &str, json: bool) {
        if cut && (!json || std::io::stderr().is_terminal()) {
            eprintln!("{}", note(shown, what));
        }
    }
}

/// The note for a list cut at `shown` rows.
pub fn note(shown: usize, what: &str) -> String {
    format!("vod-eventd: showing {shown} {what}; more exist: --limit N shows up to N, --all shows every one")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_more_is_fetched_and_cut_off() {
        let limit = Limit { limit: 2, all: false };
        assert_eq!(limit.fetch(), 3);
        let mut rows = vec![1, 2, 3];
        assert!(limit.cut(&mut rows));
        assert_eq!(rows, [1, 2]);
        let mut rows = vec![1, 2];
        assert!(!limit.cut(&mut rows), "exactly the limit is not cut");
    }

    #[test]
    fn all_and_limit_zero_show_every_row() {
        for limit in [Limit { limit: 0, all: false }, Limit { limit: 50, all: true }] {
            assert_eq!(limit.fetch(), u32::MAX);
            let mut rows: Vec<u32> = (0..100).collect();
            assert!(!limit.cut(&mut rows));
            assert_eq!(rows.len(), 100);
        }
        assert_eq!(Limit { limit: u32::MAX, all: false }.fetch(), u32::MAX);
    }
}
