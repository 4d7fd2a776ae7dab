//! "Did you mean" suggestions for misspelt keys, sections and values.

/// Below this Jaro-Winkler similarity a candidate is not offered: it keeps transpositions and
/// single-letter slips (`lerning_rate`, `trian`, `nb210`) while nonsense gets no suggestion.
const MIN_SIMILARITY: f64 = 0.8;

/// The candidate most similar to `word`, if any is similar enough.
///
/// Comparison is case-insensitive so that `Learning_Rate` still finds `learning_rate`.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word = word.to_ascii_lowercase();
    let mut best: Option<(&'a str, f64)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(&word, &candidate.to_ascii_lowercase());
        // Strict `>` keeps the first of equally good candidates, i.e. the schema's order.
        if score >= MIN_SIMILARITY && best.is_none_or(|(_, s)| score > s) {
            best = Some((candidate, score));
        }
    }
    best.map(|(c, _)| c)
}

/// ` (did you mean 'x'?)` with the candidate formatted by `fmt`, or nothing.
pub fn hint<'a, I>(word: &str, candidates: I, fmt: impl Fn(&str) -> String) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match did_you_mean(word, candidates) {
        Some(c) => format!(" (did you mean '{}'?)", fmt(c)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAIN_KEYS: &[&str] = &[
        "epochs",
        "optimizer",
        "learning_rate",
        "ending_lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "grad_clip",
        "unsampled",
        "max_steps",
    ];

    #[test]
    fn typos_find_their_key() {
        assert_eq!(
            did_you_mean("lerning_rate", TRAIN_KEYS.iter().copied()),
            Some("learning_rate")
        );
        assert_eq!(
            did_you_mean("weight_decy", TRAIN_KEYS.iter().copied()),
            Some("weight_decay")
        );
        assert_eq!(
            did_you_mean("Epochs", TRAIN_KEYS.iter().copied()),
            Some("epochs")
        );
        let sections = ["experiment", "space", "data", "train", "eval", "device"];
        assert_eq!(did_you_mean("trian", sections), Some("train"));
        assert_eq!(did_you_mean("nb210", ["nb201"]), Some("nb201"));
    }

    #[test]
    fn nonsense_gets_no_suggestion() {
        assert_eq!(did_you_mean("xyzzy", TRAIN_KEYS.iter().copied()), None);
        assert_eq!(did_you_mean("banana", ["nb201"]), None);
        assert_eq!(did_you_mean("zz", TRAIN_KEYS.iter().copied()), None);
        assert_eq!(hint("qqqq", ["train"], |c| format!("[{c}]")), "");
        assert_eq!(
            hint("trian", ["train"], |c| format!("[{c}]")),
            " (did you mean '[train]'?)"
        );
    }
}
