//! Text files that may be shipped gzip-compressed (`train.txt.gz` for `train.txt`).

use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The file that holds `path`'s text: `path` itself, or `path.gz` when only that exists.
pub fn locate(path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    gz.exists().then_some(gz)
}

/// Reads `path` (or `path.gz`) as UTF-8, decompressing files whose name ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<String> {
    let found = locate(path)
        .with_context(|| format!("{} (or {}.gz) not found", path.display(), path.display()))?;
    let bytes =
        std::fs::read(&found).with_context(|| format!("cannot read {}", found.display()))?;
    if found.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .with_context(|| {
                format!("{}: not valid gzip-compressed UTF-8 text", found.display())
            })?;
        Ok(text)
    } else {
        String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", found.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_transparently() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "plain\n").unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"packed words <eos>\n").unwrap();
        std::fs::write(dir.path().join("b.txt.gz"), enc.finish().unwrap()).unwrap();
        assert_eq!(read_maybe_gz(&dir.path().join("a.txt")).unwrap(), "plain\n");
        assert_eq!(
            read_maybe_gz(&dir.path().join("b.txt")).unwrap(),
            "packed words <eos>\n"
        );
        assert_eq!(
            read_maybe_gz(&dir.path().join("b.txt.gz")).unwrap(),
            "packed words <eos>\n"
        );
        let e = format!(
            "{:#}",
            read_maybe_gz(&dir.path().join("c.txt")).unwrap_err()
        );
        assert!(e.contains("c.txt (or") && e.contains("not found"), "{e}");
    }
}
