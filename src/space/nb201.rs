//! NAS-Bench-201: a 4-node cell with 5 candidate ops on each of its 6 edges.
//!
//! Encoding (benchmark JSON): keys `0_1 0_2 0_3 1_2 1_3 2_3` (edge j -> i) to op indices in
//! [`OPS`] order. Arch string: `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` (edges into node 1, 2, 3).
//! The archset keeps the 15,284 cells whose output is reachable through non-`none` edges.

use super::{Ctx, GroundTruth, Output, Space, Supernet};
use crate::config::Nb201Space;
use crate::nn::{self, init, BatchNorm, Conv2d, ConvParams, Linear, Mode, Path};
use crate::rng::Rng;
use anyhow::{bail, Context};
use candle_core::{Result, Tensor};
use rand::Rng as _;
use std::collections::HashMap;
use std::io::Read;

/// Candidate ops, in the benchmark's index order.
pub const OPS: [&str; 5] = [
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
];

/// Edges (from, to) in encoding-key order.
pub const EDGES: [(usize, usize); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];

/// A cell: the op index on each edge, in [`EDGES`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub ops: [u8; 6],
}

impl Arch {
    fn op(&self, from: usize, to: usize) -> u8 {
        let e = EDGES.iter().position(|&x| x == (from, to)).unwrap_or(0);
        self.ops[e]
    }

    /// Whether node 3 is reachable from node 0 through non-`none` edges.
    pub fn output_reachable(&self) -> bool {
        let mut reach = [true, false, false, false];
        for to in 1..4 {
            reach[to] = (0..to).any(|from| reach[from] && self.op(from, to) != 0);
        }
        reach[3]
    }

    /// `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`.
    pub fn to_arch_string(&self) -> String {
        let mut s = String::new();
        for to in 1..4 {
            if to > 1 {
                s.push('+');
            }
            s.push('|');
            for from in 0..to {
                s.push_str(OPS[self.op(from, to) as usize]);
                s.push('~');
                s.push_str(&from.to_string());
                s.push('|');
            }
        }
        s
    }

    /// Parses the NAS-Bench-201 arch string.
    pub fn from_arch_string(s: &str) -> anyhow::Result<Arch> {
        let nodes: Vec<&str> = s.split('+').collect();
        if nodes.len() != 3 {
            bail!("arch string {s:?}: expected 3 nodes separated by '+'");
        }
        let mut ops = [0u8; 6];
        for (i, node) in nodes.iter().enumerate() {
            let to = i + 1;
            let node = node
                .strip_prefix('|')
                .and_then(|n| n.strip_suffix('|'))
                .with_context(|| format!("arch string {s:?}: node {to} is not enclosed in '|'"))?;
            let parts: Vec<&str> = node.split('|').collect();
            if parts.len() != to {
                bail!(
                    "arch string {s:?}: node {to} has {} inputs, expected {to}",
                    parts.len()
                );
            }
            for part in parts {
                let (name, from) = part
                    .split_once('~')
                    .with_context(|| format!("arch string {s:?}: {part:?} lacks '~'"))?;
                let from: usize =
                    from.parse().ok().filter(|&f| f < to).with_context(|| {
                        format!("arch string {s:?}: bad source node in {part:?}")
                    })?;
                let op = OPS
                    .iter()
                    .position(|&o| o == name)
                    .with_context(|| format!("arch string {s:?}: unknown op {name:?}"))?;
                let e = EDGES
                    .iter()
                    .position(|&x| x == (from, to))
                    .with_context(|| format!("arch string {s:?}: bad edge {from}->{to}"))?;
                ops[e] = op as u8;
            }
        }
        Ok(Arch { ops })
    }
}

/// The space with its enumerated archset.
pub struct Nb201 {
    archset: Vec<Arch>,
}

impl Default for Nb201 {
    fn default() -> Self {
        Self::new()
    }
}

impl Nb201 {
    /// Enumerates the archset in lexicographic order of the op indices in key order.
    pub fn new() -> Self {
        let mut archset = Vec::with_capacity(15_284);
        for code in 0..5usize.pow(6) {
            let mut ops = [0u8; 6];
            let mut c = code;
            for e in (0..6).rev() {
                ops[e] = (c % 5) as u8;
                c /= 5;
            }
            let a = Arch { ops };
            if a.output_reachable() {
                archset.push(a);
            }
        }
        Self { archset }
    }

    /// The archset in the study's order: NAS-Bench-201's `arch_index` order (its `nb201.pkl`
    /// was written by walking the API's indices and keeping reachable cells), read from
    /// `archs.csv` of the benchmark folder `dir`. Training draws, the validation subset and the
    /// train-split folds index this list, so the order decides which architectures a seed picks.
    pub fn in_benchmark_order(dir: &std::path::Path) -> anyhow::Result<Self> {
        let (path, text) = read_table(dir, "archs.csv")?;
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let mut rows: Vec<(u64, Arch)> = vec![];
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.with_context(|| format!("{}:{line}: malformed CSV", path.display()))?;
            let (Some(idx), Some(s)) = (rec.get(0), rec.get(1)) else {
                bail!("{}:{line}: expected arch_index,arch_str", path.display());
            };
            let idx: u64 = idx
                .parse()
                .with_context(|| format!("{}:{line}: bad arch_index {idx:?}", path.display()))?;
            let a = Arch::from_arch_string(s)
                .with_context(|| format!("{}:{line}: bad arch string", path.display()))?;
            rows.push((idx, a));
        }
        rows.sort_by_key(|r| r.0);
        let archset: Vec<Arch> = rows
            .into_iter()
            .map(|r| r.1)
            .filter(Arch::output_reachable)
            .collect();
        let lexicographic = Self::new();
        let mut a = archset.clone();
        a.sort_unstable_by_key(|x| x.ops);
        let mut b = lexicographic.archset.clone();
        b.sort_unstable_by_key(|x| x.ops);
        if a != b {
            bail!(
                "{}: its reachable cells ({}) are not the 15,284 of NAS-Bench-201",
                path.display(),
                archset.len()
            );
        }
        Ok(Self { archset })
    }
}

impl Space for Nb201 {
    type Arch = Arch;
    const KIND: &'static str = "nb201";

    fn encode(arch: &Arch) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (e, (from, to)) in EDGES.iter().enumerate() {
            m.insert(format!("{from}_{to}"), serde_json::Value::from(arch.ops[e]));
        }
        serde_json::Value::Object(m)
    }

    fn decode(value: &serde_json::Value) -> anyhow::Result<Arch> {
        let obj = value
            .as_object()
            .context("NB201 arch must be a JSON object")?;
        let mut ops = [0u8; 6];
        for (e, (from, to)) in EDGES.iter().enumerate() {
            let key = format!("{from}_{to}");
            let v = obj
                .get(&key)
                .with_context(|| format!("NB201 arch lacks key {key:?}"))?;
            let op = v
                .as_u64()
                .filter(|&o| o < OPS.len() as u64)
                .with_context(|| format!("NB201 arch key {key:?}: {v} is not an op index 0..4"))?;
            ops[e] = op as u8;
        }
        if obj.len() != 6 {
            let extra: Vec<&String> = obj
                .keys()
                .filter(|k| !k.contains('_') || k.len() != 3)
                .collect();
            bail!("NB201 arch has unexpected keys {extra:?}");
        }
        Ok(Arch { ops })
    }

    fn arch_string(arch: &Arch) -> String {
        arch.to_arch_string()
    }

    fn archset(&self) -> Option<&[Arch]> {
        Some(&self.archset)
    }

    fn sample(&self, rng: &mut Rng) -> Arch {
        self.archset[rng.random_range(0..self.archset.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// Supernet

/// ReLU -> conv -> BN (NB201's `ReLUConvBN`, conv without bias).
struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ReluConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        momentum: f64,
    ) -> Result<Self> {
        let w = init::pytorch_default_weight(rng, &[c_out, c_in, k, k], p.device())?;
        let params = ConvParams {
            stride,
            padding: pad,
            dilation: 1,
            groups: 1,
        };
        Ok(Self {
            conv: Conv2d::new(&p.pp("conv"), w, None, params)?,
            bn: BatchNorm::new(&p.pp("bn"), c_out, true, momentum, 1e-5)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.conv.forward(&nn::activation::relu(x)?)?;
        self.bn.forward(&y, mode)
    }
}

/// One edge's candidate ops that hold weights: one instance each, or `copies` independently
/// initialised copies (the augmented-space `replicate` trick).
struct Edge {
    conv1x1: Vec<ReluConvBn>,
    conv3x3: Vec<ReluConvBn>,
}

struct Cell {
    edges: Vec<Edge>,
    copies: usize,
}

impl Cell {
    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Tensor> {
        let mode = ctx.mode;
        let mut nodes: Vec<Tensor> = vec![x.clone()];
        for to in 1..4 {
            let mut sum: Option<Tensor> = None;
            for (from, node) in nodes.iter().enumerate() {
                let e = EDGES.iter().position(|&x| x == (from, to)).unwrap_or(0);
                // With copies, every edge draws its copy in forward order whatever its op, as
                // the reference's replicate mutator draws one per layer choice and call.
                let c = if self.copies > 1 {
                    copy_draw(ctx.rng, self.copies)
                } else {
                    0
                };
                let y = match arch.ops[e] {
                    // The reference's Zero op is `x.mul(0.)`: it stays in the graph, so the ops
                    // feeding it receive (zero) gradients, which matters for the PyTorch 1.x
                    // treatment of unsampled parameters.
                    0 => node.affine(0.0, 0.0)?,
                    1 => node.clone(),
                    2 => self.edges[e].conv1x1[c].forward(node, mode)?,
                    3 => self.edges[e].conv3x3[c].forward(node, mode)?,
                    _ => nn::pool::avg_pool2d(node, 3, 1, 1, false)?,
                };
                sum = Some(match sum {
                    None => y,
                    Some(s) => (s + y)?,
                });
            }
            // Each node has at least one incoming edge, so `sum` is always set.
            nodes.push(sum.unwrap_or_else(|| nodes[0].clone()));
        }
        Ok(nodes.swap_remove(3))
    }
}

/// The ResNet basic block between stages (stride 2, no final ReLU).
struct Reduction {
    conv_a: ReluConvBn,
    conv_b: ReluConvBn,
    shortcut: Conv2d,
}

impl Reduction {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.conv_b.forward(&self.conv_a.forward(x, mode)?, mode)?;
        let s = self
            .shortcut
            .forward(&nn::pool::avg_pool2d(x, 2, 2, 0, true)?)?;
        y + s
    }
}

enum Block {
    Cell(Cell),
    Reduction(Reduction),
}

/// The NAS-Bench-201 supernet: stem, 3 stages of cells with reduction blocks between, BN-ReLU,
/// global pooling and a linear classifier.
pub struct Nb201Net {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<Block>,
    last_bn: BatchNorm,
    classifier: Linear,
}

/// The copy an edge uses in one forward call (u64 draw: the same on 32- and 64-bit hosts).
pub fn copy_draw(rng: &mut Rng, copies: usize) -> usize {
    rng.random_range(0..copies as u64) as usize
}

impl Nb201Net {
    /// Builds the supernet, drawing every initial weight from `rng` (PyTorch default init).
    pub fn new(root: &Path, cfg: &Nb201Space, num_classes: usize, rng: &mut Rng) -> Result<Self> {
        Self::with_copies(root, cfg, num_classes, 1, rng)
    }

    /// Like [`Nb201Net::new`] with `copies` independently initialised copies of every op that
    /// holds weights (`copies` = 1 is exactly `new`: same names, same draws). Every forward call
    /// then picks, per cell and edge, one copy uniformly with the context's RNG
    /// ([`copy_draw`]), in training, recalibration and evaluation alike. Copy 0 keeps the
    /// op's name; copy c > 0 is `<op>_copy<c>`.
    pub fn with_copies(
        root: &Path,
        cfg: &Nb201Space,
        num_classes: usize,
        copies: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if copies == 0 {
            candle_core::bail!("Nb201Net: copies must be at least 1");
        }
        let c = cfg.channels;
        let m = cfg.bn_momentum;
        let dev = root.device().clone();
        let w = init::pytorch_default_weight(rng, &[c, 3, 3, 3], &dev)?;
        let stem = Conv2d::new(
            &root.pp("stem.conv"),
            w,
            None,
            ConvParams {
                stride: 1,
                padding: 1,
                dilation: 1,
                groups: 1,
            },
        )?;
        let stem_bn = BatchNorm::new(&root.pp("stem.bn"), c, true, m, 1e-5)?;
        let mut blocks = vec![];
        let mut c_prev = c;
        for stage in 0..3 {
            let c_s = c << stage;
            if stage > 0 {
                let p = root.pp(format!("blocks.{}", blocks.len()));
                let conv_a = ReluConvBn::new(&p.pp("conv_a"), rng, c_prev, c_s, 3, 2, 1, m)?;
                let conv_b = ReluConvBn::new(&p.pp("conv_b"), rng, c_s, c_s, 3, 1, 1, m)?;
                let w = init::pytorch_default_weight(rng, &[c_s, c_prev, 1, 1], &dev)?;
                let shortcut = Conv2d::new(&p.pp("shortcut"), w, None, ConvParams::default())?;
                blocks.push(Block::Reduction(Reduction {
                    conv_a,
                    conv_b,
                    shortcut,
                }));
            }
            for _ in 0..cfg.cells_per_stage {
                let p = root.pp(format!("blocks.{}", blocks.len()));
                let mut edges = vec![];
                for (from, to) in EDGES {
                    let e = p.pp(format!("edge_{from}_{to}"));
                    let name = |op: &str, c: usize| {
                        if c == 0 {
                            op.to_string()
                        } else {
                            format!("{op}_copy{c}")
                        }
                    };
                    // Copy 0 of both ops first, so that one copy draws exactly as `new` did.
                    let mut conv1x1 = vec![ReluConvBn::new(
                        &e.pp("nor_conv_1x1"),
                        rng,
                        c_s,
                        c_s,
                        1,
                        1,
                        0,
                        m,
                    )?];
                    let mut conv3x3 = vec![ReluConvBn::new(
                        &e.pp("nor_conv_3x3"),
                        rng,
                        c_s,
                        c_s,
                        3,
                        1,
                        1,
                        m,
                    )?];
                    for c in 1..copies {
                        conv1x1.push(ReluConvBn::new(
                            &e.pp(name("nor_conv_1x1", c)),
                            rng,
                            c_s,
                            c_s,
                            1,
                            1,
                            0,
                            m,
                        )?);
                    }
                    for c in 1..copies {
                        conv3x3.push(ReluConvBn::new(
                            &e.pp(name("nor_conv_3x3", c)),
                            rng,
                            c_s,
                            c_s,
                            3,
                            1,
                            1,
                            m,
                        )?);
                    }
                    edges.push(Edge { conv1x1, conv3x3 });
                }
                blocks.push(Block::Cell(Cell { edges, copies }));
            }
            c_prev = c_s;
        }
        let last_bn = BatchNorm::new(&root.pp("last_bn"), c_prev, true, m, 1e-5)?;
        let w = init::pytorch_default_weight(rng, &[num_classes, c_prev], &dev)?;
        let b = init::pytorch_default_bias(rng, c_prev, num_classes, &dev)?;
        let classifier = Linear::new(&root.pp("classifier"), w, Some(b))?;
        Ok(Self {
            stem,
            stem_bn,
            blocks,
            last_bn,
            classifier,
        })
    }
}

impl Supernet for Nb201Net {
    type Arch = Arch;

    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Output> {
        let mode = ctx.mode;
        let mut h = self.stem_bn.forward(&self.stem.forward(x)?, mode)?;
        for b in &self.blocks {
            h = match b {
                Block::Cell(c) => c.forward(&h, arch, ctx)?,
                Block::Reduction(r) => r.forward(&h, mode)?,
            };
        }
        let h = nn::activation::relu(&self.last_bn.forward(&h, mode)?)?;
        let logits = self.classifier.forward(&nn::pool::global_avg_pool(&h)?)?;
        Ok(Output {
            logits,
            aux_logits: None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Ground truth

/// Reads `name` from `dir`, or `name.gz` transparently.
fn read_table(dir: &std::path::Path, name: &str) -> anyhow::Result<(std::path::PathBuf, String)> {
    let plain = dir.join(name);
    if plain.exists() {
        let text = std::fs::read_to_string(&plain)
            .with_context(|| format!("reading {}", plain.display()))?;
        return Ok((plain, text));
    }
    let gz = dir.join(format!("{name}.gz"));
    let f = std::fs::File::open(&gz)
        .with_context(|| format!("ground truth table {} (or .gz) not found", plain.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", gz.display()))?;
    Ok((gz, text))
}

/// Rows of a CSV keyed by `arch_index`, the named columns parsed as f64.
fn read_columns(
    dir: &std::path::Path,
    name: &str,
    cols: &[&str],
) -> anyhow::Result<HashMap<usize, Vec<f64>>> {
    let (path, text) = read_table(dir, name)?;
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .with_context(|| format!("{}: no header", path.display()))?
        .clone();
    let find = |c: &str| {
        headers
            .iter()
            .position(|h| h == c)
            .with_context(|| format!("{}: no column {c:?}", path.display()))
    };
    let idx_col = find("arch_index")?;
    let col_idx: Vec<usize> = cols
        .iter()
        .map(|c| find(c))
        .collect::<anyhow::Result<_>>()?;
    let mut out = HashMap::new();
    for (row, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), row + 2))?;
        let bad = || format!("{}: row {}: malformed value", path.display(), row + 2);
        let idx: usize = rec
            .get(idx_col)
            .and_then(|v| v.parse().ok())
            .with_context(bad)?;
        let vals: Vec<f64> = col_idx
            .iter()
            .map(|&c| {
                rec.get(c)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite())
            })
            .collect::<Option<_>>()
            .with_context(bad)?;
        out.insert(idx, vals);
    }
    Ok(out)
}

/// The NAS-Bench-201 arch strings by index (`archs.csv`).
pub fn read_archs(dir: &std::path::Path) -> anyhow::Result<HashMap<usize, Arch>> {
    let (path, text) = read_table(dir, "archs.csv")?;
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let mut out = HashMap::new();
    for (row, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), row + 2))?;
        let idx: usize = rec
            .get(0)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: row {}: bad arch_index", path.display(), row + 2))?;
        let s = rec
            .get(1)
            .with_context(|| format!("{}: row {}: no arch_str", path.display(), row + 2))?;
        let arch = Arch::from_arch_string(s)
            .with_context(|| format!("{}: row {}", path.display(), row + 2))?;
        out.insert(idx, arch);
    }
    Ok(out)
}

/// Ground truth for `dataset` (an NB201 split name): the mean over seeds of the 200-epoch
/// accuracy that the study scores against, in percent. `cifar10-valid`: valid accuracy;
/// `cifar10`: test accuracy; `cifar100`, `imagenet-16-120`: x-valid accuracy, derived as
/// 2 * (whole test set) - (x-test half), the halves being equal in size. The second seed (seed
/// 888 against 777) serves the noise ceiling where both are present.
pub fn ground_truth(dir: &std::path::Path, dataset: &str) -> anyhow::Result<GroundTruth<Arch>> {
    let archs = read_archs(dir)?;
    let (scores, second, source): (HashMap<usize, f64>, HashMap<usize, f64>, String) = match dataset {
        "cifar10-valid" => {
            let t = read_columns(dir, "acc200_cifar10-valid.csv", &["valid_acc_mean", "valid_acc_seed777", "valid_acc_seed888"])?;
            let s = t.iter().map(|(k, v)| (*k, v[0])).collect();
            let two = t.iter().filter(|(_, v)| v[1] > 0.0 && v[2] > 0.0).map(|(k, v)| (*k, v[2])).collect();
            (s, two, "acc200_cifar10-valid.csv: valid_acc_mean (percent)".into())
        }
        "cifar10" => {
            let t = read_columns(dir, "test200_mean.csv", &["cifar10_test_acc_mean"])?;
            (t.iter().map(|(k, v)| (*k, v[0])).collect(), HashMap::new(), "test200_mean.csv: cifar10_test_acc_mean (percent)".into())
        }
        "cifar100" | "imagenet-16-120" => {
            let (file, prefix) = if dataset == "cifar100" {
                ("acc200_cifar100.csv", "cifar100")
            } else {
                ("acc200_ImageNet16-120.csv", "imagenet16")
            };
            let all = read_columns(dir, file, &["valtest_acc_mean"])?;
            let xtest_col = format!("{prefix}_xtest_acc_mean");
            let xt = read_columns(dir, "test200_mean.csv", &[&xtest_col])?;
            let s = all
                .iter()
                .filter_map(|(k, v)| xt.get(k).map(|t| (*k, 2.0 * v[0] - t[0])))
                .collect();
            (s, HashMap::new(), format!("2 x {file}:valtest_acc_mean - test200_mean.csv:{xtest_col} = x-valid accuracy (percent)"))
        }
        other => bail!("no NAS-Bench-201 ground truth for dataset {other:?} (one of cifar10-valid, cifar10, cifar100, imagenet-16-120)"),
    };
    let by_arch = |m: &HashMap<usize, f64>| -> HashMap<Arch, f64> {
        m.iter()
            .filter_map(|(i, s)| archs.get(i).map(|a| (*a, *s)))
            .collect()
    };
    let second_seed = if second.is_empty() {
        None
    } else {
        Some(by_arch(&second))
    };
    Ok(GroundTruth {
        scores: by_arch(&scores),
        source,
        second_seed,
    })
}

/// Parameter counts in millions (`params_mb`) by architecture, from the 200-epoch table of
/// `dataset` (`cifar10` reads the `cifar10-valid` table: the same ten-class networks). The
/// focus-branch trick's `nondominated` and `lstsq` metrics use them.
pub fn params(dir: &std::path::Path, dataset: &str) -> anyhow::Result<HashMap<Arch, f64>> {
    let file = match dataset {
        "cifar10-valid" | "cifar10" => "acc200_cifar10-valid.csv",
        "cifar100" => "acc200_cifar100.csv",
        "imagenet-16-120" => "acc200_ImageNet16-120.csv",
        other => bail!("no NAS-Bench-201 parameter counts for dataset {other:?} (one of cifar10-valid, cifar10, cifar100, imagenet-16-120)"),
    };
    let archs = read_archs(dir)?;
    let t = read_columns(dir, file, &["params_mb"])?;
    Ok(t.iter()
        .filter_map(|(i, v)| archs.get(i).map(|a| (*a, v[0])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archset_has_15284_reachable_cells() {
        let s = Nb201::new();
        assert_eq!(s.archset().map(|a| a.len()), Some(15_284));
        // A cell with only `none` into node 3 is excluded; the all-skip cell is included.
        assert!(!Arch {
            ops: [1, 1, 0, 1, 0, 0]
        }
        .output_reachable());
        assert!(Arch { ops: [1; 6] }.output_reachable());
        // Reachable through node 1 only: 0->1 conv, 1->3 skip.
        assert!(Arch {
            ops: [3, 0, 0, 0, 1, 0]
        }
        .output_reachable());
    }

    #[test]
    fn arch_string_round_trip_and_encoding() {
        let s = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|";
        let a = Arch::from_arch_string(s).unwrap();
        assert_eq!(a.to_arch_string(), s);
        // Edges in key order 0_1 0_2 0_3 1_2 1_3 2_3.
        assert_eq!(a.ops, [4, 2, 2, 1, 1, 1]);
        let j = Nb201::encode(&a);
        assert_eq!(
            j.to_string(),
            r#"{"0_1":4,"0_2":2,"0_3":2,"1_2":1,"1_3":1,"2_3":1}"#
        );
        assert_eq!(Nb201::decode(&j).unwrap(), a);
        for bad in [
            r#"{"0_1":4,"0_2":2,"0_3":2,"1_2":1,"1_3":1}"#,
            r#"{"0_1":5,"0_2":2,"0_3":2,"1_2":1,"1_3":1,"2_3":1}"#,
            r#"{"0_1":4,"0_2":2,"0_3":2,"1_2":1,"1_3":1,"2_3":1,"x":1}"#,
        ] {
            assert!(
                Nb201::decode(&serde_json::from_str(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            "|x~0|+|a~0|b~1|+|c~0|d~1|e~2|",
            "|none~0|",
            "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|",
        ] {
            assert!(Arch::from_arch_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shipped_ground_truth_matches_published_optima() {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benchmarks/nb201"));
        let archs = read_archs(dir).unwrap();
        assert_eq!(archs.len(), 15_625);
        let gt = ground_truth(dir, "cifar10-valid").unwrap();
        assert_eq!(gt.scores.len(), 15_625);
        let best = gt.scores.values().cloned().fold(f64::MIN, f64::max);
        // The published cifar10-valid optimum: 91.607 at index 6111.
        assert!((best - 91.607).abs() < 1e-3, "{best}");
        assert!((gt.scores[&archs[&6111]] - best).abs() < 1e-9);
        let gt = ground_truth(dir, "cifar100").unwrap();
        assert!(gt.scores.len() > 15_000);
        // params_mb of arch 0 in the shipped tables.
        let p = params(dir, "cifar10-valid").unwrap();
        assert_eq!(p.len(), 15_625);
        assert_eq!(p[&archs[&0]], 0.129306);
        assert_eq!(params(dir, "cifar10").unwrap()[&archs[&0]], 0.129306);
        assert_eq!(params(dir, "cifar100").unwrap()[&archs[&0]], 0.135156);
        assert!(params(dir, "svhn").is_err());
        assert!(ground_truth(dir, "svhn").is_err());
    }
}
