//! TensorBoard event files: TFRecord framing around hand-encoded `Event` protobufs, so that
//! `tensorboard --logdir results/` shows a run's scalars without a protobuf or TensorFlow
//! dependency. Also a reader, used by the tests and by anyone checking a file's integrity.
//!
//! Record framing (TFRecord): `u64 length` (little endian), `u32 masked_crc32c(length bytes)`,
//! `data`, `u32 masked_crc32c(data)`. The protobuf subset written:
//! `Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5; } }`,
//! `Summary { repeated Value value = 1; }`, `Value { string tag = 1; float simple_value = 2; }`.

use super::records::EvalRecord;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI_REFLECTED
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli), the checksum TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: checksums of data that itself holds checksums stay well distributed.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What one event carries besides its time and step.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    FileVersion(String),
    /// `(tag, simple_value)` pairs of one summary.
    Scalars(Vec<(String, f32)>),
    /// An event with neither (other writers' graph or session events).
    Other,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub payload: Payload,
}

/// The protobuf bytes of `event`.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = vec![];
    put_key(&mut out, 1, 1);
    out.extend_from_slice(&event.wall_time.to_le_bytes());
    if event.step != 0 {
        put_key(&mut out, 2, 0);
        // int64 is encoded as its two's complement bit pattern.
        put_varint(&mut out, event.step as u64);
    }
    match &event.payload {
        Payload::FileVersion(v) => put_bytes(&mut out, 3, v.as_bytes()),
        Payload::Scalars(values) => {
            let mut summary = vec![];
            for (tag, value) in values {
                let mut v = vec![];
                put_bytes(&mut v, 1, tag.as_bytes());
                put_key(&mut v, 2, 5);
                v.extend_from_slice(&value.to_le_bytes());
                put_bytes(&mut summary, 1, &v);
            }
            put_bytes(&mut out, 5, &summary);
        }
        Payload::Other => {}
    }
    out
}

/// Appends one TFRecord holding `data` to `out`.
pub fn frame_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// A protobuf field as read: its number and its value (varint, fixed64, fixed32 or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

struct Fields<'a> {
    rest: &'a [u8],
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if rest.len() < n {
        bail!("truncated protobuf: {n} bytes wanted, {} left", rest.len());
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn varint(rest: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take(rest, 1)?[0];
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("protobuf varint longer than 10 bytes")
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Field<'a>)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut rest = self.rest;
        let item = (|| {
            let key = varint(&mut rest)?;
            let field = match key & 7 {
                0 => Field::Varint(varint(&mut rest)?),
                1 => Field::Fixed64(take(&mut rest, 8)?.try_into()?),
                2 => {
                    let n = varint(&mut rest)?;
                    let n = usize::try_from(n).context("protobuf length does not fit in memory")?;
                    Field::Bytes(take(&mut rest, n)?)
                }
                5 => Field::Fixed32(take(&mut rest, 4)?.try_into()?),
                w => bail!("unsupported protobuf wire type {w} (field {})", key >> 3),
            };
            Ok((key >> 3, field))
        })();
        match item {
            Ok(v) => {
                self.rest = rest;
                Some(Ok(v))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

/// Decodes the protobuf bytes of one event (unknown fields are skipped, as protobuf requires).
pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    let mut event = Event {
        wall_time: 0.0,
        step: 0,
        payload: Payload::Other,
    };
    for f in fields(bytes) {
        match f? {
            (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => event.step = v as i64,
            (3, Field::Bytes(b)) => {
                event.payload = Payload::FileVersion(
                    String::from_utf8(b.to_vec()).context("file_version is not UTF-8")?,
                )
            }
            (5, Field::Bytes(b)) => {
                let mut values = vec![];
                for v in fields(b) {
                    if let (1, Field::Bytes(vb)) = v? {
                        let (mut tag, mut value) = (String::new(), None);
                        for vf in fields(vb) {
                            match vf? {
                                (1, Field::Bytes(t)) => {
                                    tag = String::from_utf8(t.to_vec())
                                        .context("summary tag is not UTF-8")?
                                }
                                (2, Field::Fixed32(x)) => value = Some(f32::from_le_bytes(x)),
                                _ => {}
                            }
                        }
                        // Values without simple_value (images, histograms) are not scalars.
                        if let Some(x) = value {
                            values.push((tag, x));
                        }
                    }
                }
                event.payload = Payload::Scalars(values);
            }
            _ => {}
        }
    }
    Ok(event)
}

/// Reads every record of an event file, checking both checksums of each; an error names the
/// file, the record and the byte offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rest: &[u8] = &bytes;
    let mut events = vec![];
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        let i = events.len();
        let ctx = || format!("{}: record {i} at byte {offset}", path.display());
        let header = take(&mut rest, 12).with_context(ctx)?;
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc(len_bytes).to_le_bytes() != len_crc {
            bail!("{}: length checksum mismatch", ctx());
        }
        let len = usize::try_from(u64::from_le_bytes(len_bytes.try_into()?)).with_context(ctx)?;
        let data = take(&mut rest, len).with_context(ctx)?;
        let data_crc = take(&mut rest, 4).with_context(ctx)?;
        if masked_crc(data).to_le_bytes() != data_crc {
            bail!("{}: data checksum mismatch", ctx());
        }
        events.push(decode_event(data).with_context(ctx)?);
    }
    Ok(events)
}

/// The event files of a folder in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("tfevents"))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes one events file. Records are buffered; [`TbWriter::flush`] (and dropping the writer)
/// hands them to the file system.
pub struct TbWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TbWriter {
    /// Creates `dir` and a new `events.out.tfevents.<time>.<host>` in it (never reusing an
    /// existing file: a resumed run appends a new file, and TensorBoard, reading the files in
    /// name order, keeps the later values of steps written twice), starting with the
    /// `brain.Event:2` version record.
    pub fn open(dir: &Path) -> Result<TbWriter> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create TensorBoard folder {}", dir.display()))?;
        let wall = now();
        let base = format!("events.out.tfevents.{:010}.{}", wall as u64, hostname());
        let mut k = 0;
        let (path, file) = loop {
            // A name in the same second as an earlier file gets a suffix that sorts after it.
            let name = if k == 0 {
                base.clone()
            } else {
                format!("{base}.{k}")
            };
            let path = dir.join(name);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => k += 1,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        };
        let mut w = TbWriter {
            path,
            out: BufWriter::new(file),
        };
        w.write_event(&Event {
            wall_time: wall,
            step: 0,
            payload: Payload::FileVersion("brain.Event:2".into()),
        })?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        let mut rec = vec![];
        frame_record(&mut rec, &encode_event(event));
        self.out
            .write_all(&rec)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// One scalar at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.scalars(step, &[(tag, value)])
    }

    /// Several scalars of one step, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let step = i64::try_from(step).context("TensorBoard step exceeds int64")?;
        let values = values
            .iter()
            .map(|(t, v)| (t.to_string(), *v as f32))
            .collect();
        self.write_event(&Event {
            wall_time: now(),
            step,
            payload: Payload::Scalars(values),
        })
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for TbWriter {
    fn drop(&mut self) {
        // Nothing to report a failure to here; the pipeline flushes explicitly where it matters.
        let _ = self.out.flush();
    }
}

/// The pipeline's TensorBoard log. TensorBoard is a viewer, not a result: a failure to write it
/// logs one warning and turns the log off instead of stopping the run.
pub struct TbLog(Option<TbWriter>);

impl TbLog {
    /// Opens a new events file under `<run>/tb/`.
    pub fn open(run_dir: &Path) -> TbLog {
        match TbWriter::open(&run_dir.join("tb")) {
            Ok(w) => TbLog(Some(w)),
            Err(e) => {
                tracing::warn!("TensorBoard events are off for this run: {e:#}");
                TbLog(None)
            }
        }
    }

    /// A log that writes nothing (the ranks of a data-parallel run other than rank 0).
    pub fn off() -> TbLog {
        TbLog(None)
    }

    fn guard(&mut self, f: impl FnOnce(&mut TbWriter) -> Result<()>) {
        if let Some(w) = self.0.as_mut() {
            if let Err(e) = f(w) {
                tracing::warn!("TensorBoard events are off from now on: {e:#}");
                self.0 = None;
            }
        }
    }

    /// `train/loss`, `train/accuracy`, `train/lr` of one optimizer step.
    pub fn train_step(&mut self, step: u64, loss: f64, accuracy: f64, lr: f64) {
        self.guard(|w| {
            w.scalars(
                step,
                &[
                    ("train/loss", loss),
                    ("train/accuracy", accuracy),
                    ("train/lr", lr),
                ],
            )
        });
    }

    /// The correlations and mean supernet accuracy of one evaluation, at step = epoch. Undefined
    /// correlations are left out (TensorBoard has no "missing").
    pub fn eval(&mut self, rec: &EvalRecord) {
        let mut values = vec![("eval/mean_accuracy", rec.mean_accuracy)];
        if let Some(p) = rec.mean_perplexity {
            values.push(("eval/mean_perplexity", p));
        }
        for (tag, v) in [
            ("eval/kendall_tau", rec.kendall_tau),
            ("eval/spearman", rec.spearman),
            ("eval/pearson", rec.pearson),
            ("eval/top_k_overlap", rec.top_k_overlap),
        ] {
            if let Some(v) = v {
                values.push((tag, v));
            }
        }
        self.guard(|w| w.scalars(rec.epoch as u64, &values).and_then(|_| w.flush()));
    }

    pub fn flush(&mut self) {
        self.guard(|w| w.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    /// The first record of every TensorBoard file (`brain.Event:2` at wall time 0) byte for byte,
    /// from the protobuf spec: key 0x09 + fixed64, key 0x1a + length + text.
    #[test]
    fn event_encoding_known_bytes() {
        let e = Event {
            wall_time: 0.0,
            step: 0,
            payload: Payload::FileVersion("brain.Event:2".into()),
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0x1a, 13]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(encode_event(&e), want);
        let s = Event {
            wall_time: 1.5,
            step: 300,
            payload: Payload::Scalars(vec![("a".into(), 1.0)]),
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 0xac, 0x02]);
        // summary { value { tag "a", simple_value 1.0 } }
        want.extend_from_slice(&[0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(encode_event(&s), want);
        assert_eq!(decode_event(&want).unwrap(), s);
    }

    #[test]
    fn write_and_read_back_with_checksums() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tb");
        let path = {
            let mut w = TbWriter::open(&dir).unwrap();
            for step in 1..=5u64 {
                w.scalars(
                    step,
                    &[
                        ("train/loss", 2.0 / step as f64),
                        ("train/accuracy", 0.1 * step as f64),
                        ("train/lr", 0.1),
                    ],
                )
                .unwrap();
            }
            w.scalar("eval/kendall_tau", 2, 0.25).unwrap();
            w.flush().unwrap();
            w.path().to_path_buf()
        };
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 7);
        assert_eq!(
            events[0].payload,
            Payload::FileVersion("brain.Event:2".into())
        );
        assert!(events[0].wall_time > 1.6e9);
        for (i, e) in events[1..6].iter().enumerate() {
            let step = i as i64 + 1;
            assert_eq!(e.step, step);
            let want = vec![
                ("train/loss".to_string(), (2.0 / step as f64) as f32),
                ("train/accuracy".to_string(), (0.1 * step as f64) as f32),
                ("train/lr".to_string(), 0.1f32),
            ];
            assert_eq!(e.payload, Payload::Scalars(want));
        }
        assert_eq!(events[6].step, 2);
        assert_eq!(
            events[6].payload,
            Payload::Scalars(vec![("eval/kendall_tau".into(), 0.25)])
        );

        // Every record's framing: the length and both checksums agree with the bytes.
        let bytes = fs::read(&path).unwrap();
        let mut off = 0;
        let mut n = 0;
        while off < bytes.len() {
            let len = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()),
                masked_crc(&bytes[off..off + 8])
            );
            let data = &bytes[off + 12..off + 12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[off + 12 + len..off + 16 + len].try_into().unwrap()),
                masked_crc(data)
            );
            off += 16 + len;
            n += 1;
        }
        assert_eq!((off, n), (bytes.len(), 7));

        // A second writer (a resumed run) gets its own file, sorted after the first.
        let second = TbWriter::open(&dir).unwrap().path().to_path_buf();
        assert_ne!(second, path);
        assert_eq!(event_files(&dir).unwrap(), vec![path.clone(), second]);

        // A flipped bit is caught and named.
        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        let bad_path = t.path().join("events.out.tfevents.bad");
        fs::write(&bad_path, &bad).unwrap();
        let err = format!("{:#}", read_events(&bad_path).unwrap_err());
        assert!(
            err.contains("record 6") && err.contains("data checksum mismatch"),
            "{err}"
        );
        // So is a truncated record.
        fs::write(&bad_path, &bytes[..bytes.len() - 3]).unwrap();
        let err = format!("{:#}", read_events(&bad_path).unwrap_err());
        assert!(err.contains("record 6"), "{err}");
    }

    #[test]
    fn tb_log_writes_eval_scalars_and_skips_undefined() {
        let t = tempfile::tempdir().unwrap();
        let mut log = TbLog::open(t.path());
        log.train_step(1, 2.5, 0.125, 0.05);
        let rec = EvalRecord {
            epoch: 3,
            num_archs: 10,
            num_with_ground_truth: 10,
            mean_accuracy: 0.5,
            min_accuracy: 0.1,
            max_accuracy: 0.9,
            mean_loss: 1.0,
            kendall_tau: Some(0.4),
            spearman: None,
            pearson: Some(0.6),
            top_k_overlap: None,
            top_k: 1,
            ground_truth_seed_tau: None,
            ..Default::default()
        };
        log.eval(&rec);
        drop(log);
        let files = event_files(&t.path().join("tb")).unwrap();
        assert_eq!(files.len(), 1);
        let events = read_events(&files[0]).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].step, 1);
        assert_eq!(
            events[1].payload,
            Payload::Scalars(vec![
                ("train/loss".into(), 2.5),
                ("train/accuracy".into(), 0.125),
                ("train/lr".into(), 0.05)
            ])
        );
        assert_eq!(events[2].step, 3);
        assert_eq!(
            events[2].payload,
            Payload::Scalars(vec![
                ("eval/mean_accuracy".into(), 0.5),
                ("eval/kendall_tau".into(), 0.4),
                ("eval/pearson".into(), 0.6)
            ])
        );
    }
}
