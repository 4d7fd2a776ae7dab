//! Where a dotted key sits in a TOML text, for error messages that name a line.
//!
//! The text is parsed once more with every key wrapped in `toml::Spanned`, which the toml
//! deserializer fills with the key's byte range. That covers `[a.b]` headers, dotted keys
//! (`a.b = 1`) and inline tables alike, without a hand-written scanner.

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

/// A TOML document reduced to its keys and their positions.
#[derive(Debug, Default)]
pub struct KeyMap {
    entries: Vec<(String, Range<usize>, KeyMap)>,
}

impl KeyMap {
    /// Parses `text`; `None` when it is not valid TOML (then there are no lines to report).
    pub fn parse(text: &str) -> Option<KeyMap> {
        toml::from_str::<KeyMap>(text).ok()
    }

    /// The byte range of the deepest key of `path` that the text contains; `None` when not even
    /// the first key is there.
    pub fn span_of<S: AsRef<str>>(&self, path: &[S]) -> Option<Range<usize>> {
        let (first, rest) = path.split_first()?;
        let (_, span, child) = self.entries.iter().find(|(k, _, _)| k == first.as_ref())?;
        Some(child.span_of(rest).unwrap_or_else(|| span.clone()))
    }
}

/// 1-based line and column of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, col)
}

/// The 1-based line of `path` in `text`, when the text contains (part of) it.
pub fn line_of<S: AsRef<str>>(text: &str, path: &[S]) -> Option<usize> {
    let span = KeyMap::parse(text)?.span_of(path)?;
    Some(line_col(text, span.start).0)
}

impl<'de> Deserialize<'de> for KeyMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyMapVisitor)
    }
}

struct KeyMapVisitor;

impl<'de> Visitor<'de> for KeyMapVisitor {
    type Value = KeyMap;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyMap, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let span = key.span();
            let child = map.next_value::<KeyMap>()?;
            entries.push((key.into_inner(), span, child));
        }
        Ok(KeyMap { entries })
    }

    // Arrays (of tables too) are not descended into: no key of the schema lives inside one.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyMap, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(KeyMap::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeyMap, E> {
        Ok(KeyMap::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeyMap, E> {
        Ok(KeyMap::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeyMap, E> {
        Ok(KeyMap::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeyMap, E> {
        Ok(KeyMap::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<KeyMap, E> {
        Ok(KeyMap::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# a comment
[experiment]
name = \"x\"

[train]
epochs = 3
lerning_rate = 0.1

[eval.bn_recalibration]
steps = 2
data.root = \"d\"
inline = { a = 1, b = { c = 2 } }
";

    #[test]
    fn finds_keys_in_tables_dotted_keys_and_inline_tables() {
        assert_eq!(line_of(DOC, &["experiment"]), Some(2));
        assert_eq!(line_of(DOC, &["experiment", "name"]), Some(3));
        assert_eq!(line_of(DOC, &["train", "lerning_rate"]), Some(7));
        assert_eq!(line_of(DOC, &["eval", "bn_recalibration"]), Some(9));
        assert_eq!(
            line_of(DOC, &["eval", "bn_recalibration", "steps"]),
            Some(10)
        );
        assert_eq!(
            line_of(DOC, &["eval", "bn_recalibration", "data", "root"]),
            Some(11)
        );
        assert_eq!(
            line_of(DOC, &["eval", "bn_recalibration", "inline", "b", "c"]),
            Some(12)
        );
        // A missing leaf falls back to its deepest present parent.
        assert_eq!(line_of(DOC, &["train", "nothing"]), Some(5));
        assert_eq!(line_of(DOC, &["nothing"]), None);
    }

    #[test]
    fn line_and_column_of_offsets() {
        let text = "ab\ncd\n\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 7), (4, 1));
        assert_eq!(line_col(text, 9), (4, 3));
        assert_eq!(line_col(text, 999), (4, 4));
    }

    #[test]
    fn invalid_toml_has_no_lines() {
        assert!(KeyMap::parse("a = ").is_none());
    }
}
