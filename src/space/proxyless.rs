//! ProxylessNAS (ImageNet, MBConv choices): a MobileNetV2-like chain of 21 cells, each choosing
//! one inverted-residual block (3x3 / 5x5 / 7x7 depthwise kernel, expansion 3 or 6) or `Zero`.
//!
//! Encoding (benchmark JSON, `benchmarks/proxylessnas.csv`): keys `stage0_cell0 ... stage5_cell0`
//! (stages of 4, 4, 4, 4, 4, 1 cells) to op indices in [`OPS`] order; the first cell of each
//! stage has no `Zero` (index 6). The study's supernet (`space/proxyless/network.py`): stem conv
//! 3x3 stride 2 + BN + ReLU6, an MBConv1 3x3 block without shortcut, the 21 choice cells (an
//! identity shortcut wherever a cell keeps its input's shape, whatever op is chosen), a 1x1
//! feature-mix conv + BN + ReLU6, global average pooling, a linear classifier.

use super::{Cost, Ctx, Output, Space, Supernet};
use crate::config::ProxylessSpace;
use crate::nn::{self, init, Act, BatchNorm, Conv2d, ConvParams, Linear, Mode, Path};
use crate::rng::Rng;
use anyhow::{bail, Context};
use candle_core::{Result, Tensor};
use rand::Rng as _;

/// Op names in the benchmark's index order (the study's `PRIMITIVES + ["Zero"]`).
pub const OPS: [&str; 7] = [
    "3x3_MBConv3",
    "3x3_MBConv6",
    "5x5_MBConv3",
    "5x5_MBConv6",
    "7x7_MBConv3",
    "7x7_MBConv6",
    "Zero",
];

/// Cells per stage.
pub const STAGE_CELLS: [usize; 6] = [4, 4, 4, 4, 4, 1];
/// Stage widths before the width multiplier.
pub const STAGE_WIDTHS: [usize; 6] = [24, 40, 80, 96, 192, 320];
/// Stride of each stage's first cell.
pub const STAGE_STRIDES: [usize; 6] = [2, 2, 2, 1, 2, 1];
/// Choice cells in all.
pub const NUM_CELLS: usize = 21;
/// The index of `Zero`.
pub const ZERO: u8 = 6;

/// The encoding keys in the study's order (`stage<k>_cell<i>`), which is also sampling order.
pub fn keys() -> Vec<String> {
    cell_positions()
        .map(|(s, c)| format!("stage{s}_cell{c}"))
        .collect()
}

/// (stage, cell in stage) of every choice cell, in order.
fn cell_positions() -> impl Iterator<Item = (usize, usize)> {
    STAGE_CELLS
        .iter()
        .enumerate()
        .flat_map(|(s, &n)| (0..n).map(move |c| (s, c)))
}

/// One choice: an MBConv with its kernel and expansion, or `Zero`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    MbConv { kernel: usize, expand: usize },
    Zero,
}

impl Op {
    /// The op of benchmark index `i` (0..=6).
    pub fn from_index(i: u8) -> Option<Op> {
        let (kernel, expand) = match i {
            0 => (3, 3),
            1 => (3, 6),
            2 => (5, 3),
            3 => (5, 6),
            4 => (7, 3),
            5 => (7, 6),
            6 => return Some(Op::Zero),
            _ => return None,
        };
        Some(Op::MbConv { kernel, expand })
    }
}

/// An architecture: one op index per choice cell, in key order. The first cell of a stage never
/// holds `Zero` (the constructor refuses it), so every value of this type is in the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    ops: [u8; NUM_CELLS],
}

impl Arch {
    /// Checks every index against its cell's choices (0..=5 for a stage's first cell, 0..=6
    /// otherwise); the error names the key.
    pub fn new(ops: [u8; NUM_CELLS]) -> anyhow::Result<Arch> {
        for ((s, c), &op) in cell_positions().zip(&ops) {
            let n = choices(c);
            if usize::from(op) >= n {
                bail!(
                    "stage{s}_cell{c}: op index {op} is out of range (0..={}{})",
                    n - 1,
                    if c == 0 {
                        "; the first cell of a stage cannot be Zero"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(Arch { ops })
    }

    /// Op indices in key order.
    pub fn ops(&self) -> &[u8; NUM_CELLS] {
        &self.ops
    }

    /// The op of cell `i` (key order).
    pub fn op(&self, i: usize) -> Op {
        // Indices are checked by the constructor.
        Op::from_index(self.ops[i]).unwrap_or(Op::Zero)
    }
}

/// Number of choices of the cell at position `cell` of its stage.
fn choices(cell: usize) -> usize {
    if cell == 0 {
        6
    } else {
        7
    }
}

/// The space (2.6e17 architectures: no enumerated archset).
#[derive(Clone, Copy, Debug, Default)]
pub struct Proxyless;

impl Space for Proxyless {
    type Arch = Arch;
    const KIND: &'static str = "proxyless";
    const TOP5: bool = true;

    fn encode(arch: &Arch) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, op) in keys().into_iter().zip(arch.ops) {
            m.insert(k, serde_json::Value::from(op));
        }
        serde_json::Value::Object(m)
    }

    fn decode(value: &serde_json::Value) -> anyhow::Result<Arch> {
        let obj = value
            .as_object()
            .context("ProxylessNAS arch must be a JSON object")?;
        let keys = keys();
        if let Some(extra) = obj.keys().find(|k| !keys.contains(k)) {
            bail!("ProxylessNAS arch has an unexpected key {extra:?} (keys are stage0_cell0 ... stage5_cell0)");
        }
        let mut ops = [0u8; NUM_CELLS];
        for (i, key) in keys.iter().enumerate() {
            let v = obj
                .get(key)
                .with_context(|| format!("ProxylessNAS arch lacks key {key:?}"))?;
            let op = v
                .as_u64()
                .and_then(|o| u8::try_from(o).ok())
                .with_context(|| {
                    format!("ProxylessNAS arch key {key:?}: {v} is not an op index")
                })?;
            ops[i] = op;
        }
        Arch::new(ops).context("ProxylessNAS arch")
    }

    fn arch_string(arch: &Arch) -> String {
        let mut s = String::new();
        for (i, (_, cell)) in cell_positions().enumerate() {
            if i > 0 {
                s.push(if cell == 0 { '|' } else { '-' });
            }
            s.push_str(match arch.op(i) {
                Op::MbConv { kernel, expand } => match (kernel, expand) {
                    (3, 3) => "3x3e3",
                    (3, _) => "3x3e6",
                    (5, 3) => "5x5e3",
                    (5, _) => "5x5e6",
                    (_, 3) => "7x7e3",
                    _ => "7x7e6",
                },
                Op::Zero => "zero",
            });
        }
        s
    }

    fn archset(&self) -> Option<&[Arch]> {
        None
    }

    /// Each key uniformly over its choices, keys in order (the study's `_random_sample`).
    fn sample(&self, rng: &mut Rng) -> Arch {
        let mut ops = [0u8; NUM_CELLS];
        for ((_, c), op) in cell_positions().zip(ops.iter_mut()) {
            *op = rng.random_range(0..choices(c) as u64) as u8;
        }
        Arch { ops }
    }

    /// One factor per cell in key order: op indices 0..5 for a stage's first cell (no
    /// `Zero`), 0..6 for the others (the study's `get_default_search_space`).
    fn factors(&self) -> Option<super::factors::Factors> {
        use super::factors::{Draw, Factor, Factors};
        let factors = cell_positions()
            .map(|(s, c)| {
                Factor::single(
                    format!("stage{s}_cell{c}"),
                    (0..choices(c) as u64).map(Into::into).collect(),
                )
            })
            .collect();
        Some(Factors::new(factors, Draw::U64))
    }
}

// ---------------------------------------------------------------------------------------------
// Widths

/// The study's `make_divisible(v, divisor)`: round to the nearest multiple of `divisor` (at least
/// `divisor`), one step up if that lost more than 10%.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as i64;
    let mut new_v = (((v + divisor as f64 / 2.0) as i64) / d * d).max(d);
    if (new_v as f64) < 0.9 * v {
        new_v += d;
    }
    new_v as usize
}

/// Channel widths for a width multiplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    /// Output of the first conv.
    pub stem: usize,
    /// Output of the MBConv1 block.
    pub first: usize,
    pub stages: [usize; 6],
    /// Output of the feature-mix conv.
    pub last: usize,
}

impl Widths {
    pub fn new(width_mult: f64) -> Widths {
        Widths {
            stem: make_divisible(32.0 * width_mult, 8),
            first: make_divisible(16.0 * width_mult, 8),
            stages: STAGE_WIDTHS.map(|w| make_divisible(w as f64 * width_mult, 8)),
            // The study keeps 1280 for multipliers up to 1.
            last: if width_mult > 1.0 {
                make_divisible(1280.0 * width_mult, 8)
            } else {
                1280
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// BatchNorm settings of the space.
#[derive(Clone, Copy, Debug)]
pub struct Bn {
    pub momentum: f64,
    pub eps: f64,
}

/// conv (no bias) + BN, with ReLU6 after it when `act`. The conv weight is drawn from
/// N(0, sqrt(2 / (k^2 C_out))) (the study's `he_fout`, not divided by groups).
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    act: bool,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    groups: usize,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        groups: usize,
        act: bool,
        bn: Bn,
    ) -> Result<Self> {
        let std = (2.0 / (k * k * c_out) as f64).sqrt();
        let w = init::normal(rng, &[c_out, c_in / groups, k, k], std, p.device())?;
        let params = ConvParams {
            stride,
            padding: k / 2,
            dilation: 1,
            groups,
        };
        Ok(Self {
            conv: Conv2d::new(&p.pp("conv"), w, None, params)?,
            bn: BatchNorm::new(&p.pp("bn"), c_out, true, bn.momentum, bn.eps)?,
            act,
            c_in,
            c_out,
            k,
            stride,
            groups,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let act = if self.act { Act::Relu6 } else { Act::Identity };
        self.bn.forward_act(&self.conv.forward(x)?, mode, act)
    }

    /// Output side for an input side `h` (padding k / 2).
    fn out_size(&self, h: usize) -> usize {
        (h + 2 * (self.k / 2) - self.k) / self.stride + 1
    }

    /// FLOPs and parameters (conv and BN) on an `h` x `h` input, counted like the study's
    /// `flops_counter`; returns the output side too.
    fn cost(&self, h: usize) -> (u64, u64, usize) {
        let o = self.out_size(h);
        let out_elems = (self.c_out * o * o) as u64;
        let flops = self.c_in as u64 * out_elems * (self.k * self.k) as u64 / self.groups as u64;
        let params =
            (self.c_out * (self.c_in / self.groups) * self.k * self.k + 2 * self.c_out) as u64;
        (flops, params, o)
    }
}

/// The study's `MBInvertedConvLayer`: 1x1 expand-BN-ReLU6 (when the expansion is above 1),
/// depthwise kxk-BN-ReLU6 (padding k / 2, the stride here), 1x1-BN. The expanded width is
/// `round(C_in * expansion)`.
pub struct MbConv {
    expand: Option<ConvBn>,
    depth: ConvBn,
    point: ConvBn,
}

impl MbConv {
    /// Weights are drawn in forward order: expand, depthwise, pointwise.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        expand: usize,
        stride: usize,
        bn: Bn,
    ) -> Result<Self> {
        let mid = c_in * expand;
        let expand = if expand > 1 {
            Some(ConvBn::new(
                &p.pp("inverted_bottleneck"),
                rng,
                c_in,
                mid,
                1,
                1,
                1,
                true,
                bn,
            )?)
        } else {
            None
        };
        let depth = ConvBn::new(
            &p.pp("depth_conv"),
            rng,
            mid,
            mid,
            kernel,
            stride,
            mid,
            true,
            bn,
        )?;
        let point = ConvBn::new(&p.pp("point_linear"), rng, mid, c_out, 1, 1, 1, false, bn)?;
        Ok(Self {
            expand,
            depth,
            point,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x, mode)?,
            None => x.clone(),
        };
        self.point.forward(&self.depth.forward(&h, mode)?, mode)
    }

    fn cost(&self, h: usize) -> (u64, u64, usize) {
        let (mut flops, mut params) = (0, 0);
        if let Some(e) = &self.expand {
            let (f, p, _) = e.cost(h);
            flops += f;
            params += p;
        }
        let (f, p, o) = self.depth.cost(h);
        let (f2, p2, _) = self.point.cost(o);
        (flops + f + f2, params + p + p2, o)
    }
}

/// One choice cell: the six MBConvs (Zero holds no weights) and whether the identity shortcut
/// is added (stride 1 and equal widths, as in the study, whatever op is chosen).
struct Cell {
    choices: Vec<MbConv>,
    shortcut: bool,
}

/// The ProxylessNAS supernet.
pub struct ProxylessNet {
    first_conv: ConvBn,
    first_block: MbConv,
    cells: Vec<Cell>,
    feature_mix: ConvBn,
    classifier: Linear,
    widths: Widths,
    num_classes: usize,
}

impl ProxylessNet {
    /// Builds the supernet, drawing every conv weight from `rng` (N(0, sqrt(2 / (k^2 C_out))),
    /// BN weight 1 and bias 0, classifier weight PyTorch's default and bias 0). Parameter names
    /// follow the study's state dict (`blocks.<i>.mobile_inverted_conv.choices.<op>...`).
    pub fn new(
        root: &Path,
        cfg: &ProxylessSpace,
        num_classes: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if num_classes == 0 {
            candle_core::bail!("ProxylessNet: no classes");
        }
        let bn = Bn {
            momentum: cfg.bn_momentum,
            eps: cfg.bn_eps,
        };
        let widths = Widths::new(cfg.width_mult);
        let first_conv = ConvBn::new(
            &root.pp("first_conv"),
            rng,
            3,
            widths.stem,
            3,
            2,
            1,
            true,
            bn,
        )?;
        let first_block = MbConv::new(
            &root.pp("blocks.0.mobile_inverted_conv"),
            rng,
            widths.stem,
            widths.first,
            3,
            1,
            1,
            bn,
        )?;
        let mut cells = Vec::with_capacity(NUM_CELLS);
        let mut c_in = widths.first;
        for (i, (stage, cell)) in cell_positions().enumerate() {
            let c_out = widths.stages[stage];
            let stride = if cell == 0 { STAGE_STRIDES[stage] } else { 1 };
            let p = root.pp(format!("blocks.{}.mobile_inverted_conv.choices", i + 1));
            let mut choices = Vec::with_capacity(6);
            for (o, name) in OPS.iter().enumerate().take(6) {
                let Some(Op::MbConv { kernel, expand }) = Op::from_index(o as u8) else {
                    candle_core::bail!("internal: op {name} is not an MBConv");
                };
                choices.push(MbConv::new(
                    &p.pp(o),
                    rng,
                    c_in,
                    c_out,
                    kernel,
                    expand,
                    stride,
                    bn,
                )?);
            }
            cells.push(Cell {
                choices,
                shortcut: stride == 1 && c_in == c_out,
            });
            c_in = c_out;
        }
        let feature_mix = ConvBn::new(
            &root.pp("feature_mix_layer"),
            rng,
            c_in,
            widths.last,
            1,
            1,
            1,
            true,
            bn,
        )?;
        let dev = root.device().clone();
        let w = init::pytorch_default_weight(rng, &[num_classes, widths.last], &dev)?;
        let b = Tensor::zeros(num_classes, candle_core::DType::F32, &dev)?;
        let classifier = Linear::new(&root.pp("classifier.linear"), w, Some(b))?;
        Ok(Self {
            first_conv,
            first_block,
            cells,
            feature_mix,
            classifier,
            widths,
            num_classes,
        })
    }

    pub fn widths(&self) -> Widths {
        self.widths
    }

    /// Whether choice cell `i` (key order) adds the identity shortcut.
    pub fn has_shortcut(&self, i: usize) -> bool {
        self.cells.get(i).is_some_and(|c| c.shortcut)
    }

    /// FLOPs and parameters of `arch` on a 1 x 3 x `side` x `side` input.
    pub fn cost_at(&self, arch: &Arch, side: usize) -> Cost {
        let (mut flops, mut params, mut h) = self.first_conv.cost(side);
        let (f, p, o) = self.first_block.cost(h);
        flops += f;
        params += p;
        h = o;
        for (i, cell) in self.cells.iter().enumerate() {
            match arch.op(i) {
                Op::MbConv { .. } => {
                    let (f, p, o) = cell.choices[usize::from(arch.ops[i])].cost(h);
                    flops += f;
                    params += p;
                    h = o;
                }
                // Zero keeps the shape (only shape-keeping cells offer it) and counts nothing.
                Op::Zero => {}
            }
        }
        let (f, p, _) = self.feature_mix.cost(h);
        flops += f;
        params += p;
        let last = self.widths.last as u64;
        let k = self.num_classes as u64;
        flops += last * k;
        params += last * k + k;
        Cost { flops, params }
    }
}

impl Supernet for ProxylessNet {
    type Arch = Arch;

    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Output> {
        let mode = ctx.mode;
        let mut h = self.first_conv.forward(x, mode)?;
        h = self.first_block.forward(&h, mode)?;
        for (i, cell) in self.cells.iter().enumerate() {
            h = match (arch.op(i), cell.shortcut) {
                (Op::MbConv { .. }, true) => {
                    (cell.choices[usize::from(arch.ops[i])].forward(&h, mode)? + &h)?
                }
                (Op::MbConv { .. }, false) => {
                    cell.choices[usize::from(arch.ops[i])].forward(&h, mode)?
                }
                // The study's Zero returns fresh zeros (no graph), so Zero + x is x itself.
                (Op::Zero, true) => h,
                (Op::Zero, false) => {
                    candle_core::bail!("choice cell {i}: Zero in a cell without shortcut")
                }
            };
        }
        let h = self.feature_mix.forward(&h, mode)?;
        // Classifier dropout is 0 in the study.
        let logits = self.classifier.forward(&nn::pool::global_avg_pool(&h)?)?;
        Ok(Output {
            logits,
            aux_logits: None,
        })
    }

    /// Counted on the study's 1 x 3 x 224 x 224 input.
    fn cost(&self, arch: &Arch) -> Option<Cost> {
        Some(self.cost_at(arch, 224))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Store;
    use crate::space::benchmark;
    use candle_core::{DType, Device};

    fn bench() -> std::path::PathBuf {
        std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benchmarks/proxylessnas.csv"
        ))
    }

    #[test]
    fn widths_match_the_study() {
        let w = Widths::new(1.35);
        assert_eq!(w.stem, 40);
        assert_eq!(w.first, 24);
        assert_eq!(w.stages, [32, 56, 112, 128, 256, 432]);
        assert_eq!(w.last, 1728);
        let w = Widths::new(1.0);
        assert_eq!((w.stem, w.first, w.last), (32, 16, 1280));
        assert_eq!(w.stages, [24, 40, 80, 96, 192, 320]);
        // 10 rounds to 8, which loses more than 10%: one step up.
        assert_eq!(make_divisible(10.0, 8), 16);
        assert_eq!(make_divisible(3.0, 8), 8);
    }

    #[test]
    fn every_benchmark_row_round_trips() {
        let text = std::fs::read_to_string(bench()).unwrap();
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut n = 0;
        for rec in rdr.records() {
            let rec = rec.unwrap();
            let json: serde_json::Value = serde_json::from_str(&rec[0]).unwrap();
            let a = Proxyless::decode(&json).unwrap();
            assert_eq!(Proxyless::encode(&a).to_string(), &rec[0]);
            assert_eq!(Proxyless::decode(&Proxyless::encode(&a)).unwrap(), a);
            n += 1;
        }
        assert_eq!(n, 36);
        let t = benchmark::read::<Proxyless>(&bench(), "accuracy").unwrap();
        assert_eq!(t.rows.len(), 36);
        assert_eq!(t.rows[0].score, 0.758);
        assert_eq!(t.extra_columns, ["accuracy_top5", "flops", "params"]);
    }

    #[test]
    fn decode_errors_name_the_problem() {
        let good = Proxyless::encode(&Proxyless.sample(&mut crate::rng::stream(1, "t", &[])));
        let with = |k: &str, v: serde_json::Value| {
            let mut o = good.as_object().unwrap().clone();
            o.insert(k.into(), v);
            serde_json::Value::Object(o)
        };
        let err = |v: &serde_json::Value| format!("{:#}", Proxyless::decode(v).unwrap_err());
        let e = err(&with("stage2_cell0", 6.into()));
        assert!(
            e.contains("stage2_cell0") && e.contains("cannot be Zero"),
            "{e}"
        );
        let e = err(&with("stage2_cell1", 7.into()));
        assert!(e.contains("stage2_cell1") && e.contains("0..=6"), "{e}");
        let e = err(&with("stage1_cell3", "3".into()));
        assert!(
            e.contains("stage1_cell3") && e.contains("not an op index"),
            "{e}"
        );
        let e = err(&with("stage6_cell0", 1.into()));
        assert!(e.contains("unexpected key \"stage6_cell0\""), "{e}");
        let mut o = good.as_object().unwrap().clone();
        o.remove("stage5_cell0");
        let e = err(&serde_json::Value::Object(o));
        assert!(e.contains("lacks key \"stage5_cell0\""), "{e}");
        assert!(err(&serde_json::json!([1, 2])).contains("JSON object"));
        // Zero is fine in later cells.
        assert!(Proxyless::decode(&with("stage2_cell1", 6.into())).is_ok());
    }

    #[test]
    fn bad_benchmark_row_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(bench()).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[3] = lines[3].replacen(
            "\"\"stage0_cell0\"\":",
            "\"\"stage0_cell0\"\":6,\"\"x\"\":",
            1,
        );
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, lines.join("\n")).unwrap();
        let e = format!(
            "{:#}",
            benchmark::read::<Proxyless>(&p, "accuracy").unwrap_err()
        );
        assert!(e.contains("bad.csv:4") && e.contains("proxyless"), "{e}");
    }

    #[test]
    fn sampling_is_uniform_per_key_and_in_the_space() {
        let mut r = crate::rng::stream(3, "sample", &[]);
        let mut counts = vec![[0usize; 7]; NUM_CELLS];
        for _ in 0..7000 {
            let a = Proxyless.sample(&mut r);
            assert!(Arch::new(*a.ops()).is_ok());
            for (i, &o) in a.ops().iter().enumerate() {
                counts[i][usize::from(o)] += 1;
            }
        }
        for (i, (_, c)) in cell_positions().enumerate() {
            let n = choices(c);
            let expect = 7000 / n;
            for (o, &k) in counts[i].iter().enumerate() {
                if o < n {
                    assert!(k.abs_diff(expect) < expect / 6, "cell {i} op {o}: {k}");
                } else {
                    assert_eq!(k, 0, "cell {i} drew op {o}");
                }
            }
        }
        // The draw order: one u64-ranged draw per key, keys in order.
        let mut r1 = crate::rng::stream(4, "s", &[]);
        let mut r2 = r1.clone();
        let a = Proxyless.sample(&mut r1);
        for (i, (_, c)) in cell_positions().enumerate() {
            assert_eq!(u64::from(a.ops()[i]), r2.random_range(0..choices(c) as u64));
        }
    }

    #[test]
    fn cost_of_all_benchmark_archs_within_one_percent() {
        let store = Store::new(&Device::Cpu);
        let mut r = crate::rng::stream(0, "init", &[]);
        let cfg = ProxylessSpace {
            width_mult: 1.35,
            bn_momentum: 0.1,
            bn_eps: 1e-3,
        };
        let net = ProxylessNet::new(&store.root(), &cfg, 1000, &mut r).unwrap();
        let t = benchmark::read::<Proxyless>(&bench(), "accuracy").unwrap();
        let mut worst = (0f64, 0f64);
        for row in &t.rows {
            let c = net.cost(&row.arch).unwrap();
            let flops: f64 = row.extra["flops"].parse().unwrap();
            let params: f64 = row.extra["params"].parse().unwrap();
            let ef = (c.flops as f64 - flops).abs() / flops;
            let ep = (c.params as f64 - params).abs() / params;
            assert!(
                ef < 0.01 && ep < 0.01,
                "line {}: {c:?} vs {flops} / {params}",
                row.line
            );
            worst = (worst.0.max(ef), worst.1.max(ep));
        }
        eprintln!(
            "worst relative error: flops {:.2e}, params {:.2e}",
            worst.0, worst.1
        );
        // The counts agree far better than the 1% the test allows (float32 rounding only).
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "{worst:?}");
        // The parameter count is what the store holds on the sampled path: every parameter of
        // the supernet minus the unchosen ops.
        let total: usize = store.params().iter().map(|(_, v)| v.elem_count()).sum();
        assert!(total as u64 > net.cost(&t.rows[0].arch).unwrap().params);
    }

    #[test]
    fn zero_cell_passes_its_input_through() {
        let store = Store::new(&Device::Cpu);
        let mut r = crate::rng::stream(0, "init", &[]);
        let cfg = ProxylessSpace {
            width_mult: 0.25,
            bn_momentum: 0.1,
            bn_eps: 1e-3,
        };
        let net = ProxylessNet::new(&store.root(), &cfg, 5, &mut r).unwrap();
        // Widths 8, 8, then 8 16 24 24 48 80: stage 3's first cell keeps its shape at this
        // width, so it gets the shortcut (its encoding still offers no Zero).
        assert_eq!(net.widths().stages, [8, 16, 24, 24, 48, 80]);
        let shortcuts: Vec<bool> = (0..NUM_CELLS).map(|i| net.has_shortcut(i)).collect();
        assert!(shortcuts[12]);
        assert!(
            !shortcuts[0] && !shortcuts[4] && !shortcuts[8] && !shortcuts[16] && !shortcuts[20]
        );
        assert!(shortcuts[1] && shortcuts[19]);
        let x = Tensor::ones((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let mut ops = [0u8; NUM_CELLS];
        for (i, (_, c)) in cell_positions().enumerate() {
            ops[i] = if c == 0 { 1 } else { ZERO };
        }
        let all_zero = Arch::new(ops).unwrap();
        let mut r = crate::rng::stream(0, "x", &[]);
        let y = net
            .forward(&x, &all_zero, &mut Ctx::new(Mode::Eval, &mut r))
            .unwrap();
        assert_eq!(y.logits.dims(), &[2, 5]);
        // Only the chosen ops' parameters are counted; Zero cells count nothing.
        let c_zero = net.cost_at(&all_zero, 224);
        ops[1] = 0;
        let c_one = net.cost_at(&Arch::new(ops).unwrap(), 224);
        assert!(c_one.flops > c_zero.flops && c_one.params > c_zero.params);
    }
}
