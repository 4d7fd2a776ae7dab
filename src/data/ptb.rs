//! Penn Treebank for the DARTS-PTB language model: the corpus reader, `batchify`, and the
//! study's sequence windows (variable-length BPTT in training, fixed length in evaluation).
//!
//! Semantics of the study's `datasets/ptb.py`: every line of `train.txt`, `valid.txt`,
//! `test.txt` (in that order, one dictionary over all three) becomes its whitespace-separated
//! words plus `<eos>`; a stream of T tokens is cut to a multiple of the batch size B and laid
//! out as (T / B) rows x B columns, column c holding tokens [c * T/B, (c + 1) * T/B). A window
//! at row `pos` of length `len` reads rows `pos..pos+len` and predicts rows `pos+1..pos+1+len`;
//! a window that would run past the end is cut to the remaining rows, and iteration stops once
//! `pos >= rows - 2` (input and target of at least 2 rows each). Files may be gzip-compressed
//! (`train.txt.gz`).

use super::text;
use crate::rng::Rng;
use anyhow::{bail, Result};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::path::Path;

/// The end-of-sentence token appended to every line.
pub const EOS: &str = "<eos>";

/// The three splits as token ids, and the dictionary (`words[id]`).
#[derive(Clone, Debug)]
pub struct Corpus {
    pub words: Vec<String>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
}

impl Corpus {
    pub fn vocab(&self) -> usize {
        self.words.len()
    }

    /// Reads `root/{train,valid,test}.txt` (or `.txt.gz`). A missing file, one that is not
    /// text, or one without a single token fails naming the file.
    pub fn read(root: &Path) -> Result<Corpus> {
        let mut dict = Dictionary::default();
        let mut splits = vec![];
        for name in ["train.txt", "valid.txt", "test.txt"] {
            let path = root.join(name);
            let body = text::read_maybe_gz(&path)?;
            let ids = dict.tokenize(&body);
            if ids.is_empty() {
                let shown = text::locate(&path).unwrap_or(path);
                bail!("{}: no tokens (the file is empty)", shown.display());
            }
            splits.push(ids);
        }
        let test = splits.pop().unwrap_or_default();
        let valid = splits.pop().unwrap_or_default();
        let train = splits.pop().unwrap_or_default();
        Ok(Corpus {
            words: dict.words,
            train,
            valid,
            test,
        })
    }
}

#[derive(Default)]
struct Dictionary {
    ids: HashMap<String, u32>,
    words: Vec<String>,
}

impl Dictionary {
    fn id(&mut self, w: &str) -> u32 {
        if let Some(&i) = self.ids.get(w) {
            return i;
        }
        let i = self.words.len() as u32;
        self.words.push(w.to_string());
        self.ids.insert(w.to_string(), i);
        i
    }

    fn tokenize(&mut self, body: &str) -> Vec<u32> {
        let mut out = vec![];
        for line in python_lines(body) {
            for w in line.split(is_python_space).filter(|w| !w.is_empty()) {
                out.push(self.id(w));
            }
            out.push(self.id(EOS));
        }
        out
    }
}

/// Python's `str.split()` separators: Unicode whitespace plus the ASCII separators
/// U+001C..U+001F, which Python also splits on.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The lines a Python text-mode file iterates over (universal newlines: `\n`, `\r\n` and a lone
/// `\r` end a line; a last line without terminator still counts; no line after a final one).
fn python_lines(body: &str) -> Vec<&str> {
    let mut lines = vec![];
    let bytes = body.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&body[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&body[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        lines.push(&body[start..]);
    }
    lines
}

/// A token stream laid out as `rows` x `cols` (row-major: `data[r * cols + c]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Batched {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u32>,
}

/// The study's `_batchify`: keep the first `rows * b` tokens (`rows = T / b`) and lay them out
/// so that column c holds tokens `[c * rows, (c + 1) * rows)`.
pub fn batchify(tokens: &[u32], b: usize) -> Batched {
    let rows = tokens.len().checked_div(b).unwrap_or(0);
    let mut data = vec![0u32; rows * b];
    for c in 0..b {
        for r in 0..rows {
            data[r * b + c] = tokens[c * rows + r];
        }
    }
    Batched {
        rows,
        cols: b,
        data,
    }
}

impl Batched {
    /// Rows `start..start + len`, row-major (a (len, cols) block).
    pub fn rows_slice(&self, start: usize, len: usize) -> &[u32] {
        &self.data[start * self.cols..(start + len) * self.cols]
    }

    /// Whether any window can be read (at least 3 rows, see the module comment).
    pub fn has_windows(&self) -> bool {
        self.rows > 2
    }
}

/// One window: inputs are rows `start..start + len`, targets rows `start + 1..start + 1 + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

/// The study's `CorpusDataLoader` iteration over `rows` rows, each window's requested length
/// from `next_len`: windows advance by the requested length and the last one is cut.
pub fn windows(rows: usize, mut next_len: impl FnMut() -> usize) -> impl Iterator<Item = Window> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos + 2 >= rows {
            return None;
        }
        let want = next_len();
        let start = pos;
        pos += want;
        let len = if start + 1 + want > rows {
            rows - start - 1
        } else {
            want
        };
        Some(Window { start, len })
    })
}

/// Fixed-length windows (evaluation).
pub fn fixed_windows(rows: usize, len: usize) -> impl Iterator<Item = Window> {
    windows(rows, move || len)
}

/// The study's training length: mean `bptt`, halved with probability 0.05, drawn from
/// N(mean, `std`), truncated toward zero, clamped to [`low`, `high`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeqLen {
    pub bptt: usize,
    pub std: f64,
    pub low: usize,
    pub high: usize,
}

impl SeqLen {
    /// The study's call: `(bptt, 5, 5, bptt + max_seq_len_delta)`.
    pub fn study(bptt: usize, max_seq_len_delta: usize) -> Self {
        Self {
            bptt,
            std: 5.0,
            low: 5,
            high: bptt + max_seq_len_delta,
        }
    }

    pub fn draw(&self, rng: &mut Rng) -> usize {
        let mut mean = self.bptt as f64;
        if rng.random::<f64>() > 0.95 {
            mean /= 2.0;
        }
        let z: f64 = StandardNormal.sample(rng);
        // Python's int() truncates toward zero; then min(high, max(low, v)) as the study.
        let v = (mean + self.std * z).trunc();
        let v = if v < self.low as f64 {
            self.low
        } else {
            // A finite f64 above usize::MAX saturates; the min below bounds it anyway.
            v as usize
        };
        v.min(self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tokenizes_like_python_lines_and_split() {
        assert_eq!(python_lines("a b\nc\r\nd\re\n"), vec!["a b", "c", "d", "e"]);
        assert_eq!(python_lines("a\n\nb"), vec!["a", "", "b"]);
        assert_eq!(python_lines(""), Vec::<&str>::new());
        let mut d = Dictionary::default();
        let ids = d.tokenize(" the cat\u{a0}sat \n\nthe\x1fend\n");
        let words: Vec<&str> = ids.iter().map(|&i| d.words[i as usize].as_str()).collect();
        assert_eq!(
            words,
            vec!["the", "cat", "sat", EOS, EOS, "the", "end", EOS]
        );
        assert_eq!(d.words, vec!["the", "cat", "sat", EOS, "end"]);
    }

    #[test]
    fn one_dictionary_over_train_valid_test_in_order_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.txt"), "b a\n").unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"c a\n").unwrap();
        std::fs::write(dir.path().join("valid.txt.gz"), enc.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("test.txt"), "d\nb").unwrap();
        let c = Corpus::read(dir.path()).unwrap();
        assert_eq!(c.words, vec!["b", "a", EOS, "c", "d"]);
        assert_eq!(c.train, vec![0, 1, 2]);
        assert_eq!(c.valid, vec![3, 1, 2]);
        assert_eq!(c.test, vec![4, 2, 0, 2]);
    }

    #[test]
    fn bad_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.txt"), "a\n").unwrap();
        std::fs::write(dir.path().join("valid.txt"), "a\n").unwrap();
        let e = format!("{:#}", Corpus::read(dir.path()).unwrap_err());
        assert!(e.contains("test.txt") && e.contains("not found"), "{e}");
        assert_eq!(e.lines().count(), 1);
        std::fs::write(dir.path().join("test.txt"), "").unwrap();
        let e = format!("{:#}", Corpus::read(dir.path()).unwrap_err());
        assert!(e.contains("test.txt: no tokens"), "{e}");
        std::fs::write(dir.path().join("test.txt"), [0xffu8, 0xfe, b'\n']).unwrap();
        let e = format!("{:#}", Corpus::read(dir.path()).unwrap_err());
        assert!(e.contains("test.txt") && e.contains("UTF-8"), "{e}");
        std::fs::write(dir.path().join("valid.txt.gz"), b"not gzip").unwrap();
        std::fs::remove_file(dir.path().join("valid.txt")).unwrap();
        let e = format!("{:#}", Corpus::read(dir.path()).unwrap_err());
        assert!(e.contains("valid.txt.gz") && e.contains("gzip"), "{e}");
    }

    /// The shipped `data/ptb` (gzip) is the canonical corpus: the text's SHA-256 (the md5s of
    /// data/README.md belong to the same files), token counts and the 10,000-word vocabulary.
    #[test]
    fn shipped_corpus_matches_its_provenance() {
        use sha2::{Digest, Sha256};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ptb");
        for (name, sha) in [
            (
                "train.txt",
                "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
            ),
            (
                "valid.txt",
                "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
            ),
            (
                "test.txt",
                "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
            ),
        ] {
            let body = text::read_maybe_gz(&root.join(name)).unwrap();
            let got: String = Sha256::digest(body.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, sha, "{name}");
        }
        let c = Corpus::read(&root).unwrap();
        assert_eq!(
            (c.train.len(), c.valid.len(), c.test.len(), c.vocab()),
            (929_589, 73_760, 82_430, 10_000)
        );
        assert_eq!(c.words[c.train[0] as usize], "aer");
    }

    #[test]
    fn batchify_lays_out_columns_like_view_t() {
        // torch: data[:9].view(3, -1).t() -> row r = [r, 3 + r, 6 + r]; token 9 dropped.
        let t: Vec<u32> = (0..10).collect();
        let b = batchify(&t, 3);
        assert_eq!((b.rows, b.cols), (3, 3));
        assert_eq!(b.data, vec![0, 3, 6, 1, 4, 7, 2, 5, 8]);
        assert_eq!(b.rows_slice(1, 2), &[1, 4, 7, 2, 5, 8]);
        assert!(b.has_windows());
        assert!(!batchify(&t, 4).has_windows());
        assert_eq!(batchify(&t, 11).rows, 0);
    }

    #[test]
    fn windows_cover_the_rows_cut_the_last_and_stop_before_two_rows() {
        // 10 rows, length 4: starts 0, 4 (cut: 4 + 1 + 4 = 9 <= 10, kept), 8 -> 8 >= 10 - 2 stops.
        let w: Vec<Window> = fixed_windows(10, 4).collect();
        assert_eq!(
            w,
            vec![Window { start: 0, len: 4 }, Window { start: 4, len: 4 }]
        );
        // 11 rows: starts 0, 4, 8 (cut to 11 - 8 - 1 = 2).
        let w: Vec<Window> = fixed_windows(11, 4).collect();
        assert_eq!(w.last(), Some(&Window { start: 8, len: 2 }));
        assert_eq!(fixed_windows(2, 4).count(), 0);
        // Variable lengths: contiguous, every target row inside the data, last cut.
        let mut r = crate::rng::stream(0, "bptt", &[1]);
        let sl = SeqLen::study(35, 20);
        let rows = 3631;
        let w: Vec<Window> = windows(rows, || sl.draw(&mut r)).collect();
        let mut pos = 0;
        for x in &w {
            assert_eq!(x.start, pos);
            assert!(x.len >= 2 && x.start + 1 + x.len <= rows);
            pos += x.len;
        }
        assert!(pos + 2 >= rows - 1, "stopped early at {pos}");
    }

    #[test]
    fn sequence_lengths_follow_the_study() {
        let sl = SeqLen::study(35, 20);
        let mut r = crate::rng::stream(3, "bptt", &[0]);
        let n = 50_000;
        let v: Vec<usize> = (0..n).map(|_| sl.draw(&mut r)).collect();
        assert!(v.iter().all(|&x| (5..=55).contains(&x)));
        // P(len < 20) = 0.05 P(N(17.5, 5) < 20) + 0.95 P(N(35, 5) < 20)
        //             = 0.05 Phi(0.5) + 0.95 Phi(-3) = 0.05 * 0.6915 + 0.95 * 0.00135 = 0.0359;
        // without the halving it would be 0.0013 (standard error here 0.0008).
        let short = v.iter().filter(|&&x| x < 20).count() as f64 / n as f64;
        assert!((short - 0.0359).abs() < 0.004, "{short}");
        // Mean of the mixture: 0.95 * E[trunc N(35,5)] + 0.05 * E[trunc N(17.5,5)]
        // = 0.95 * 34.5 + 0.05 * 17.0 ~ 33.6 (truncation lowers each by 0.5; rounding would not).
        let mean = v.iter().sum::<usize>() as f64 / n as f64;
        assert!((mean - 33.6).abs() < 0.15, "{mean}");
        // min(high, max(low, v)): the upper bound wins when they cross, as in Python.
        let crossed = SeqLen::study(3, 0);
        assert!((0..100).all(|_| crossed.draw(&mut r) == 3));
    }
}
