//! Sparklines for `status`: one character per count, scaled to the largest. A count of 0 is
//! `·` and any other count is at least the lowest block, so "none" and "a few" never look
//! alike. Terminals without a UTF-8 locale get a plain ASCII ramp instead.

/// The UTF-8 ramp: nothing, then eight heights.
const BLOCKS: [char; 9] = ['·', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// The ASCII ramp, for a locale that is not UTF-8.
const ASCII: [char; 9] = ['.', '_', ',', '-', '~', '=', '+', '*', '#'];

/// Which characters to draw with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Unicode block elements.
    Blocks,
    /// Plain ASCII.
    Ascii,
}

impl Charset {
    /// Blocks when the locale (`LC_ALL`, else `LC_CTYPE`, else `LANG`, as the C library
    /// reads them) names UTF-8; ASCII otherwise, including when none is set.
    pub fn from_locale(var: impl Fn(&str) -> Option<String>) -> Charset {
        let locale = ["LC_ALL", "LC_CTYPE", "LANG"].into_iter().find_map(|name| var(name).filter(|v| !v.is_empty()));
        let utf8 = locale.is_some_and(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("utf-8") || l.contains("utf8")
        });
        if utf8 {
            Charset::Blocks
        } else {
            Charset::Ascii
        }
    }

    fn ramp(self) -> &'static [char; 9] {
        match self {
            Charset::Blocks => &BLOCKS,
            Charset::Ascii => &ASCII,
        }
    }
}

/// One character per count: 0 is the ramp's first, the largest count its last, and
/// anything between rounds up to one of the eight heights.
pub fn sparkline(counts: &[i64], charset: Charset) -> String {
    let ramp = charset.ramp();
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .map(|&n| {
            let n = n.clamp(0, max);
            // Ceiling of n * 8 / max: 1..=8 for any n > 0.
            ramp[((n * 8 + max - 1) / max) as usize]
        })
        .collect()
}

/// What a line's scale is: `max 12/h, 40 in all`, or `none`.
pub fn scale(counts: &[i64]) -> String {
    match counts.iter().copied().max().unwrap_or(0) {
        0 => "none".into(),
        max => format!("max {max}/h, {} in all", counts.iter().sum::<i64>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_scale_to_the_largest_and_zero_stays_apart() {
        assert_eq!(sparkline(&[0, 1, 2, 3, 4, 5, 6, 7, 8], Charset::Blocks), "·▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[0, 1, 50, 100], Charset::Blocks), "·▁▄█");
        assert_eq!(sparkline(&[0, 1, 1000], Charset::Blocks), "·▁█", "a count far below the max still shows");
        assert_eq!(sparkline(&[0, 0, 0], Charset::Blocks), "···");
        assert_eq!(sparkline(&[0, 4, 8], Charset::Ascii), ".~#");
    }

    #[test]
    fn the_scale_names_the_max_and_the_total() {
        assert_eq!(scale(&[0, 3, 12, 1]), "max 12/h, 16 in all");
        assert_eq!(scale(&[0, 0]), "none");
    }

    #[test]
    fn only_a_utf8_locale_gets_blocks() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(Charset::from_locale(env(&[("LANG", "en_US.UTF-8")])), Charset::Blocks);
        assert_eq!(Charset::from_locale(env(&[("LC_CTYPE", "C.utf8"), ("LANG", "C")])), Charset::Blocks);
        assert_eq!(Charset::from_locale(env(&[("LC_ALL", "C"), ("LANG", "en_US.UTF-8")])), Charset::Ascii);
        assert_eq!(Charset::from_locale(env(&[("LC_ALL", ""), ("LANG", "de_DE.UTF-8")])), Charset::Blocks);
        assert_eq!(Charset::from_locale(env(&[])), Charset::Ascii);
    }
}
