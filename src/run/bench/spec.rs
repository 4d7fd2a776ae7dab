//! What one benchmark row measures: the space, its network and step settings, the input
//! shapes, the fixed architecture, and the repeat counts. A [`Spec`] travels as JSON to both
//! sides (runner's worker process and the PyTorch twin), so that both run exactly the same
//! thing.
//!
//! Three shapes per space: `study` (the study's network and per-device batch; evaluation with
//! fewer recalibration batches than the study, stated in the table), `reduced` (smaller batch
//! and/or width, quick), and `tiny` (seconds; for the smoke test, not for comparisons).

use crate::config::{self, Space};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The spaces in table order.
pub const SPACES: [&str; 5] = ["nb101", "nb201", "darts", "ptb", "proxyless"];
/// The shapes `--shape` names.
pub const SHAPES: [&str; 3] = ["study", "reduced", "tiny"];

/// The training step's optimizer and loss settings (the space's study defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f64,
    /// The study's label smoothing (eps / (K - 1) on wrong classes; 0: plain cross-entropy).
    pub label_smoothing: f64,
    /// DARTS drop-path probability of this step (0 elsewhere).
    pub drop_path: f64,
}

/// One benchmark row pair (a training step and an architecture evaluation) of one space at one
/// shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// `study`, `reduced`, `tiny`, or `custom` (NB201 with `--channels` etc.).
    pub shape: String,
    /// The space's network settings (runner's `[space]` table, tagged by `kind`).
    pub space: Space,
    /// The fixed architecture both sides run (the benchmark JSON encoding).
    pub arch: serde_json::Value,
    /// Training batch (images, or PTB sequences).
    pub batch: usize,
    /// Image side (0 for PTB).
    pub image_size: usize,
    /// Classes (PTB: vocabulary size).
    pub classes: usize,
    /// PTB sequence length of the training batch and of validation windows (0 for images).
    pub bptt: usize,
    /// BN recalibration batches and their size (0 steps for PTB: no BatchNorm).
    pub recal_steps: usize,
    pub recal_batch: usize,
    /// Validation batches and their size (PTB: windows of `bptt` x `eval_batch` tokens).
    pub valid_batches: usize,
    pub eval_batch: usize,
    pub train: TrainSpec,
    pub threads: usize,
    /// Untimed runs of each phase before the timed ones.
    pub warmup: usize,
    /// Timed runs of each phase.
    pub repeats: usize,
    pub seed: u64,
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        self.space.kind()
    }

    /// One line saying what the training step runs.
    pub fn describe_step(&self) -> String {
        let t = &self.train;
        let mut extras = vec![];
        match &self.space {
            Space::Darts(d) if d.auxiliary_weight > 0.0 => {
                extras.push(format!("aux head x{}", d.auxiliary_weight))
            }
            Space::Ptb(p) => extras.push(format!("dropouts on, TAR beta {}", p.beta)),
            _ => {}
        }
        if t.drop_path > 0.0 {
            extras.push(format!("drop-path {}", t.drop_path));
        }
        if t.label_smoothing > 0.0 {
            extras.push(format!("label smoothing {}", t.label_smoothing));
        }
        if t.grad_clip > 0.0 {
            extras.push(format!("clip {}", t.grad_clip));
        }
        extras.push(format!(
            "SGD lr {} momentum {}{} wd {}",
            t.lr,
            t.momentum,
            if t.nesterov { " nesterov" } else { "" },
            t.weight_decay
        ));
        let input = if self.bptt > 0 {
            format!("batch {} x bptt {}", self.batch, self.bptt)
        } else {
            format!("batch {} x 3 x {}^2", self.batch, self.image_size)
        };
        format!("{input}; {}", extras.join(", "))
    }

    /// One line saying what the evaluation runs.
    pub fn describe_eval(&self) -> String {
        if self.bptt > 0 {
            format!(
                "validation {} windows of {} x {} tokens ({} tokens), zero hidden state",
                self.valid_batches,
                self.bptt,
                self.eval_batch,
                self.valid_batches * self.bptt * self.eval_batch
            )
        } else {
            format!(
                "BN recalibration {} x {} + validation {} x {} images",
                self.recal_steps, self.recal_batch, self.valid_batches, self.eval_batch
            )
        }
    }

    /// The network in words.
    pub fn describe_net(&self) -> String {
        match &self.space {
            Space::Nb101(s) => format!(
                "C={} {}x{} cells, {} classes",
                s.channels, s.stacks, s.cells_per_stack, self.classes
            ),
            Space::Nb201(s) => format!(
                "C={} N={} cells per stage, {} classes",
                s.channels, s.cells_per_stage, self.classes
            ),
            Space::Darts(s) => format!(
                "C={} {} cells, {} classes",
                s.channels, s.layers, self.classes
            ),
            Space::Ptb(s) => format!("H={} vocabulary {}", s.hidden, self.classes),
            Space::Proxyless(s) => format!(
                "width {} at {}x{}, {} classes",
                s.width_mult, self.image_size, self.image_size, self.classes
            ),
        }
    }
}

/// The fixed architecture of each space: NB201 conv3x3, conv3x3, conv1x1, avg pool, conv3x3,
/// skip; NB101 the parity fixture's architecture `a`; DARTS, PTB and ProxylessNAS the first
/// row of their benchmark CSV.
pub fn arch(kind: &str) -> Result<serde_json::Value> {
    let s = match kind {
        "nb101" => {
            r#"{"op1":[1,0,0],"op2":[0,0,1],"op3":[0,1,0],"op4":[1,0,0],"op5":[0,1,0],"input1":[1],"input2":[0,1],"input3":[1,0,0],"input4":[0,1,0,1],"input5":[1,0,1,0,0],"input6":[0,0,0,0,1,1]}"#
        }
        "nb201" => r#"{"0_1":3,"0_2":3,"0_3":2,"1_2":4,"1_3":3,"2_3":1}"#,
        "darts" => {
            r#"{"normal/2/0/input":1,"normal/2/0/op":"avg_pool_3x3","normal/2/1/input":0,"normal/2/1/op":"dil_conv_3x3","normal/3/0/input":0,"normal/3/0/op":"skip_connect","normal/3/1/input":2,"normal/3/1/op":"sep_conv_3x3","normal/4/0/input":1,"normal/4/0/op":"dil_conv_5x5","normal/4/1/input":0,"normal/4/1/op":"max_pool_3x3","normal/5/0/input":1,"normal/5/0/op":"sep_conv_3x3","normal/5/1/input":3,"normal/5/1/op":"avg_pool_3x3","reduce/2/0/input":0,"reduce/2/0/op":"dil_conv_5x5","reduce/2/1/input":1,"reduce/2/1/op":"avg_pool_3x3","reduce/3/0/input":0,"reduce/3/0/op":"sep_conv_3x3","reduce/3/1/input":1,"reduce/3/1/op":"sep_conv_3x3","reduce/4/0/input":0,"reduce/4/0/op":"dil_conv_5x5","reduce/4/1/input":3,"reduce/4/1/op":"avg_pool_3x3","reduce/5/0/input":1,"reduce/5/0/op":"avg_pool_3x3","reduce/5/1/input":3,"reduce/5/1/op":"sep_conv_3x3"}"#
        }
        "ptb" => {
            r#"{"act/0":2,"act/1":2,"act/2":2,"act/3":0,"act/4":0,"act/5":0,"act/6":0,"act/7":2,"switch/0":0,"switch/1":0,"switch/2":1,"switch/3":1,"switch/4":4,"switch/5":2,"switch/6":6,"switch/7":2}"#
        }
        "proxyless" => {
            r#"{"stage0_cell0":4,"stage0_cell1":0,"stage0_cell2":6,"stage0_cell3":3,"stage1_cell0":3,"stage1_cell1":6,"stage1_cell2":4,"stage1_cell3":2,"stage2_cell0":4,"stage2_cell1":6,"stage2_cell2":1,"stage2_cell3":4,"stage3_cell0":5,"stage3_cell1":6,"stage3_cell2":5,"stage3_cell3":6,"stage4_cell0":1,"stage4_cell1":5,"stage4_cell2":5,"stage4_cell3":0,"stage5_cell0":3}"#
        }
        other => bail!(
            "unknown space {other:?} (expected one of {})",
            SPACES.join(", ")
        ),
    };
    Ok(serde_json::from_str(s)?)
}

/// The study's optimizer and loss settings of a space, from runner's built-in defaults
/// (REFERENCE section 3).
fn train_spec(cfg: &config::Config, drop_path: f64) -> TrainSpec {
    let t = &cfg.train;
    TrainSpec {
        lr: t.learning_rate,
        momentum: t.momentum,
        nesterov: t.nesterov,
        weight_decay: t.weight_decay,
        grad_clip: t.grad_clip,
        label_smoothing: t.label_smoothing,
        drop_path,
    }
}

/// Network and input sizes of one shape.
struct Dims {
    /// NB101/NB201/DARTS channels; PTB hidden size; unused for ProxylessNAS.
    channels: usize,
    /// NB101 cells per stack, NB201 cells per stage, DARTS cells.
    cells: usize,
    width_mult: f64,
    image_size: usize,
    classes: usize,
    batch: usize,
    bptt: usize,
    recal: (usize, usize),
    valid: (usize, usize),
}

fn dims(kind: &str, shape: &str, cfg: &config::Config) -> Result<Dims> {
    let recal_batch = cfg.eval.bn_recalibration.batch_size;
    let eval_batch = cfg.data.eval_batch_size;
    let d = |channels, cells, batch, recal: (usize, usize), valid: (usize, usize)| Dims {
        channels,
        cells,
        width_mult: 0.0,
        image_size: 32,
        classes: 10,
        batch,
        bptt: 0,
        recal,
        valid,
    };
    Ok(match (kind, shape) {
        // The study's network and batch; 2 of the study's recalibration batches and 2
        // validation batches (per-batch cost is what matters; `--recal-steps` on NB201, or the
        // JSON output's per-batch times, scale it up).
        ("nb101", "study") => d(128, 3, 256, (2, recal_batch), (2, eval_batch)),
        ("nb101", "reduced") => d(32, 3, 64, (2, 64), (2, 64)),
        ("nb101", "tiny") => d(4, 1, 2, (1, 2), (1, 2)),
        ("nb201", "study") => d(16, 5, 256, (2, recal_batch), (2, eval_batch)),
        ("nb201", "reduced") => d(16, 5, 64, (2, 64), (2, 64)),
        ("nb201", "tiny") => d(4, 1, 2, (1, 2), (1, 2)),
        // The study's per-GPU batch of 112 (its config's 128 is the single-device default).
        ("darts", "study") => d(36, 20, 112, (2, recal_batch), (2, eval_batch)),
        ("darts", "reduced") => d(16, 8, 32, (2, 32), (2, 32)),
        ("darts", "tiny") => d(4, 5, 2, (1, 2), (1, 2)),
        ("ptb", s) => {
            let (hidden, classes, batch, bptt, valid) = match s {
                // 20 windows of the study's evaluation batch 10 x bptt 35.
                "study" => (850, 10_000, 256, 35, (20, eval_batch)),
                "reduced" => (256, 10_000, 64, 35, (10, eval_batch)),
                "tiny" => (16, 50, 4, 5, (2, 2)),
                _ => bail!("unknown shape {s:?}"),
            };
            Dims {
                channels: hidden,
                cells: 0,
                width_mult: 0.0,
                image_size: 0,
                classes,
                batch,
                bptt,
                recal: (0, 0),
                valid,
            }
        }
        ("proxyless", s) => {
            let (width_mult, image_size, classes, batch, recal, valid) = match s {
                "study" => (1.35, 224, 1000, 128, (2, recal_batch), (2, eval_batch)),
                "reduced" => (1.35, 112, 1000, 32, (2, 32), (2, 32)),
                "tiny" => (0.25, 64, 10, 4, (1, 4), (1, 4)),
                _ => bail!("unknown shape {s:?}"),
            };
            Dims {
                channels: 0,
                cells: 0,
                width_mult,
                image_size,
                classes,
                batch,
                bptt: 0,
                recal,
                valid,
            }
        }
        (k, s) if !SPACES.contains(&k) => bail!("unknown space {k:?} (shape {s})"),
        (_, s) => bail!(
            "unknown shape {s:?} (expected one of {})",
            SHAPES.join(", ")
        ),
    })
}

/// Repeat counts and threads, common to every row.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub threads: usize,
    pub warmup: usize,
    pub repeats: usize,
}

/// The spec of `kind` at `shape` with the space's study settings.
pub fn spec(kind: &str, shape: &str, timing: Timing) -> Result<Spec> {
    let Some(cfg) = config::defaults::for_kind(kind) else {
        bail!(
            "unknown space {kind:?} (expected one of {}, or all)",
            SPACES.join(", ")
        );
    };
    let d = dims(kind, shape, &cfg)?;
    let mut drop_path = 0.0;
    let space = match cfg.space.clone() {
        Space::Nb101(mut s) => {
            s.channels = d.channels;
            s.cells_per_stack = d.cells;
            Space::Nb101(s)
        }
        Space::Nb201(mut s) => {
            s.channels = d.channels;
            s.cells_per_stage = d.cells;
            Space::Nb201(s)
        }
        Space::Darts(mut s) => {
            s.channels = d.channels;
            s.layers = d.cells;
            // Half-way through training: drop-path grows linearly to its final value.
            drop_path = s.drop_path / 2.0;
            Space::Darts(s)
        }
        Space::Ptb(mut s) => {
            s.hidden = d.channels;
            s.embedding = d.channels;
            Space::Ptb(s)
        }
        Space::Proxyless(mut s) => {
            s.width_mult = d.width_mult;
            Space::Proxyless(s)
        }
    };
    Ok(Spec {
        shape: shape.to_string(),
        space,
        arch: arch(kind)?,
        batch: d.batch,
        image_size: d.image_size,
        classes: d.classes,
        bptt: d.bptt,
        recal_steps: d.recal.0,
        recal_batch: d.recal.1,
        valid_batches: d.valid.0,
        eval_batch: d.valid.1,
        train: train_spec(&cfg, drop_path),
        threads: timing.threads,
        warmup: timing.warmup,
        repeats: timing.repeats,
        seed: 0,
    })
}

/// The NB201 options `runner bench` has always taken; set ones replace the shape's values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nb201Overrides {
    pub channels: Option<usize>,
    pub cells: Option<usize>,
    pub batch: Option<usize>,
    pub recal_steps: Option<usize>,
    pub recal_batch: Option<usize>,
    pub valid_images: Option<usize>,
    pub eval_batch: Option<usize>,
}

impl Nb201Overrides {
    pub fn any(&self) -> bool {
        [
            self.channels,
            self.cells,
            self.batch,
            self.recal_steps,
            self.recal_batch,
            self.valid_images,
            self.eval_batch,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// Applies the set options to an NB201 spec (shape `custom`); the validation images become
    /// whole batches (at least one).
    pub fn apply(&self, spec: &mut Spec) -> Result<()> {
        if !self.any() {
            return Ok(());
        }
        let Space::Nb201(s) = &mut spec.space else {
            bail!("--channels, --cells, --batch, --recal-steps, --recal-batch, --valid-images and --eval-batch apply to nb201 only");
        };
        if let Some(c) = self.channels {
            s.channels = c;
        }
        if let Some(n) = self.cells {
            s.cells_per_stage = n;
        }
        if let Some(b) = self.batch {
            spec.batch = b;
        }
        if let Some(r) = self.recal_steps {
            spec.recal_steps = r;
        }
        if let Some(r) = self.recal_batch {
            spec.recal_batch = r;
        }
        if let Some(e) = self.eval_batch {
            spec.eval_batch = e;
        }
        if let Some(v) = self.valid_images {
            spec.valid_batches = (v / spec.eval_batch.max(1)).max(1);
        }
        spec.shape = "custom".into();
        Ok(())
    }
}

/// Checks sizes a worker cannot run with, before any process starts.
pub fn validate(spec: &Spec) -> Result<()> {
    let name = format!("{} {}", spec.kind(), spec.shape);
    if spec.batch == 0 || spec.eval_batch == 0 || spec.valid_batches == 0 {
        bail!("{name}: batch sizes and the validation batch count must be at least 1");
    }
    if spec.recal_steps > 0 && spec.recal_batch == 0 {
        bail!("{name}: the recalibration batch must be at least 1");
    }
    if spec.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    if spec.threads == 0 {
        bail!("--threads must be at least 1");
    }
    match &spec.space {
        Space::Nb201(s) if s.channels == 0 || s.cells_per_stage == 0 => {
            bail!("{name}: --channels and --cells must be at least 1")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        threads: 2,
        warmup: 1,
        repeats: 3,
    };

    #[test]
    fn study_shapes_are_the_references() {
        let s = spec("darts", "study", T).unwrap();
        let Space::Darts(d) = &s.space else { panic!() };
        assert_eq!((d.channels, d.layers, s.batch), (36, 20, 112));
        assert_eq!(d.auxiliary_weight, 0.4);
        assert_eq!(s.train.drop_path, 0.1);
        assert_eq!((s.train.grad_clip, s.train.lr), (5.0, 0.025));
        assert_eq!(s.recal_batch, 200);
        let s = spec("proxyless", "study", T).unwrap();
        assert_eq!((s.batch, s.image_size, s.classes), (128, 224, 1000));
        assert_eq!(s.train.label_smoothing, 0.1);
        let s = spec("ptb", "study", T).unwrap();
        let Space::Ptb(p) = &s.space else { panic!() };
        assert_eq!(
            (p.hidden, s.batch, s.bptt, s.classes),
            (850, 256, 35, 10_000)
        );
        assert_eq!((s.train.grad_clip, s.train.momentum), (0.1, 0.0));
        let s = spec("nb101", "study", T).unwrap();
        let Space::Nb101(n) = &s.space else { panic!() };
        assert_eq!((n.channels, n.stacks, n.cells_per_stack), (128, 3, 3));
        assert_eq!((s.batch, s.recal_batch, s.train.grad_clip), (256, 400, 5.0));
        let s = spec("nb201", "study", T).unwrap();
        assert!(s.train.nesterov);
        assert_eq!((s.batch, s.recal_batch), (256, 256));
    }

    #[test]
    fn every_space_and_shape_round_trips_through_json() {
        for k in SPACES {
            for sh in SHAPES {
                let s = spec(k, sh, T).unwrap();
                validate(&s).unwrap();
                let back: Spec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
                assert_eq!(back, s);
            }
        }
        assert!(spec("nb999", "study", T).is_err());
        assert!(spec("nb201", "huge", T).is_err());
    }

    #[test]
    fn nb201_overrides_make_a_custom_shape_and_refuse_other_spaces() {
        let o = Nb201Overrides {
            cells: Some(1),
            valid_images: Some(1000),
            eval_batch: Some(250),
            ..Default::default()
        };
        let mut s = spec("nb201", "study", T).unwrap();
        o.apply(&mut s).unwrap();
        let Space::Nb201(n) = &s.space else { panic!() };
        assert_eq!(
            (n.cells_per_stage, s.valid_batches, s.shape.as_str()),
            (1, 4, "custom")
        );
        let mut d = spec("darts", "tiny", T).unwrap();
        assert!(o.apply(&mut d).is_err());
        let mut d2 = d.clone();
        Nb201Overrides::default().apply(&mut d2).unwrap();
        assert_eq!(d2, d);
    }
}
