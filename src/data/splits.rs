//! NAS-Bench-201 split files: JSON objects `{name: [type, [indices...]]}`.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;

/// The named index lists of one split file.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitFile {
    /// The file, for error messages.
    pub path: String,
    pub entries: BTreeMap<String, Vec<usize>>,
}

impl SplitFile {
    /// Indices under `key`, each checked to be below `len` (the size of the set they index).
    pub fn indices(&self, key: &str, len: usize) -> Result<Vec<usize>> {
        let v = self.entries.get(key).ok_or_else(|| {
            anyhow!(
                "{}: no `{key}` entry (has: {})",
                self.path,
                self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        if let Some((pos, &i)) = v.iter().enumerate().find(|(_, &i)| i >= len) {
            bail!(
                "{}: `{key}` index {i} (entry {pos}) is outside the {len} images it indexes",
                self.path
            );
        }
        Ok(v.clone())
    }
}

/// Reads a split file.
pub fn read(path: &Path) -> Result<SplitFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses split-file JSON; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<SplitFile> {
    let json: Json = serde_json::from_str(text).map_err(|e| anyhow!("{origin}: not JSON: {e}"))?;
    let obj = json
        .as_object()
        .ok_or_else(|| anyhow!("{origin}: expected a JSON object of splits"))?;
    let mut entries = BTreeMap::new();
    for (name, v) in obj {
        // Accept `[type, [indices]]` (NB201) and a bare `[indices]`.
        let list = match v.as_array().map(Vec::as_slice) {
            Some([Json::String(_), Json::Array(l)]) => l,
            Some(l) if l.iter().all(Json::is_number) => l,
            _ => bail!("{origin}: `{name}` is not [type, [indices...]]"),
        };
        let idx = list
            .iter()
            .enumerate()
            .map(|(k, x)| {
                x.as_u64()
                    .and_then(|u| usize::try_from(u).ok())
                    .ok_or_else(|| anyhow!("{origin}: `{name}` entry {k} ({x}) is not an index"))
            })
            .collect::<Result<Vec<_>>>()?;
        entries.insert(name.clone(), idx);
    }
    Ok(SplitFile {
        path: origin.to_string(),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nb201_layout_and_checks_bounds() {
        let s = parse(
            r#"{"train": ["train", [0, 2, 4]], "valid": ["train", [1, 3]], "bare": [5]}"#,
            "split-x.txt",
        )
        .unwrap();
        assert_eq!(s.indices("train", 5).unwrap(), vec![0, 2, 4]);
        assert_eq!(s.indices("valid", 5).unwrap(), vec![1, 3]);
        assert_eq!(s.indices("bare", 6).unwrap(), vec![5]);
        let e = s.indices("train", 4).unwrap_err().to_string();
        assert!(e.contains("split-x.txt") && e.contains("index 4"), "{e}");
        let e = s.indices("xvalid", 9).unwrap_err().to_string();
        assert!(
            e.contains("no `xvalid`") && e.contains("bare, train, valid"),
            "{e}"
        );
    }

    #[test]
    fn malformed_files_name_the_file_and_key() {
        for (text, needle) in [
            ("[1,2]", "JSON object"),
            ("{\"a\": [\"t\", [1, -2]]}", "`a` entry 1"),
            ("{\"a\": {\"b\": 1}}", "`a` is not"),
            ("{not json", "not JSON"),
        ] {
            let e = parse(text, "f.txt").unwrap_err().to_string();
            assert!(e.starts_with("f.txt") && e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn imagenet16_fixture_split_reads() {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/imagenet16/split-imagenet-16-120.txt"
        );
        let s = read(Path::new(p)).unwrap();
        assert_eq!(s.indices("xvalid", 9).unwrap(), vec![0, 2, 4, 6, 8]);
        assert_eq!(s.indices("xtest", 9).unwrap(), vec![1, 3, 5, 7]);
    }
}
