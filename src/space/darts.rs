//! DARTS-CIFAR10: normal and reduction cells of 4 nodes, each node the sum of two (op, input)
//! choices, in a 20-cell network with an auxiliary head.
//!
//! Encoding (benchmark JSON, `benchmarks/darts-cifar10.csv`): keys `normal/2/0/op`,
//! `normal/2/0/input`, ..., `reduce/5/1/input`; `<cell>/<node>/<slot>/op` is an op NAME of
//! [`OPS`], `<cell>/<node>/<slot>/input` an integer below the node's index (states 0 and 1 are
//! the two preprocessed cell inputs), the two inputs of a node distinct.
//! Arch string: `normal[op~in+op~in|...]reduce[...]` (nodes 2..5 separated by `|`).

use super::{Cost, Ctx, Output, Space, Supernet};
use crate::config::{DartsSpace, FinalPool};
use crate::nn::{self, init, BatchNorm, Conv2d, ConvParams, FactorizedReduce, Linear, Mode, Path};
use crate::rng::Rng;
use anyhow::{bail, Context};
use candle_core::{Result, Tensor};
use rand::Rng as _;
use std::collections::BTreeSet;

/// Candidate ops, in the study's `PRIMITIVES` order (the order its sampler enumerates).
pub const OPS: [&str; 7] = [
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
];

/// Cell kinds in the sampler's (sorted key) order.
pub const CELLS: [&str; 2] = ["normal", "reduce"];

/// Nodes of a cell: indices 2..=5 (0 and 1 are the cell's inputs).
pub const NODES: std::ops::RangeInclusive<usize> = 2..=5;

/// BatchNorm settings of every BN in the network (PyTorch defaults, affine).
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// A candidate op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    MaxPool3x3,
    AvgPool3x3,
    SkipConnect,
    SepConv3x3,
    SepConv5x5,
    DilConv3x3,
    DilConv5x5,
}

impl Op {
    /// Every op in [`OPS`] order.
    pub const ALL: [Op; 7] = [
        Op::MaxPool3x3,
        Op::AvgPool3x3,
        Op::SkipConnect,
        Op::SepConv3x3,
        Op::SepConv5x5,
        Op::DilConv3x3,
        Op::DilConv5x5,
    ];

    pub fn name(self) -> &'static str {
        OPS[self as usize]
    }

    pub fn from_name(name: &str) -> Option<Op> {
        OPS.iter().position(|&o| o == name).map(|i| Op::ALL[i])
    }
}

/// One of a node's two choices: an op applied to one earlier state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub op: Op,
    pub input: u8,
}

/// Why a cell or an architecture is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchError {
    #[error("{cell}/{node}: both slots take input {input} (the two inputs of a node must differ)")]
    SameInputs {
        cell: &'static str,
        node: usize,
        input: u8,
    },
    #[error(
        "{cell}/{node}/{slot}/input = {input} is out of range (node {node} takes states 0..{node})"
    )]
    InputOutOfRange {
        cell: &'static str,
        node: usize,
        slot: usize,
        input: u8,
    },
}

/// A cell: nodes 2..5, each with two slots whose inputs are distinct earlier states. The only
/// way to build one is [`Cell::new`], which checks exactly that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    nodes: [[Slot; 2]; 4],
}

impl Cell {
    /// `nodes[k]` are the two slots of node `k + 2`; `kind` names the cell in errors.
    pub fn new(kind: &'static str, nodes: [[Slot; 2]; 4]) -> std::result::Result<Cell, ArchError> {
        for (k, slots) in nodes.iter().enumerate() {
            let node = k + 2;
            for (s, slot) in slots.iter().enumerate() {
                if slot.input as usize >= node {
                    return Err(ArchError::InputOutOfRange {
                        cell: kind,
                        node,
                        slot: s,
                        input: slot.input,
                    });
                }
            }
            if slots[0].input == slots[1].input {
                return Err(ArchError::SameInputs {
                    cell: kind,
                    node,
                    input: slots[0].input,
                });
            }
        }
        Ok(Cell { nodes })
    }

    /// The two slots of node `node` (2..=5).
    pub fn node(&self, node: usize) -> [Slot; 2] {
        self.nodes[node - 2]
    }

    /// Nodes 2..5 in order.
    pub fn nodes(&self) -> &[[Slot; 2]; 4] {
        &self.nodes
    }
}

/// A DARTS architecture: one normal and one reduction cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    pub normal: Cell,
    pub reduce: Cell,
}

impl Arch {
    /// The cell of kind `k` (0 normal, 1 reduce, [`CELLS`] order).
    pub fn cell(&self, k: usize) -> &Cell {
        if k == 0 {
            &self.normal
        } else {
            &self.reduce
        }
    }

    /// `normal[op~in+op~in|...]reduce[...]`.
    pub fn to_arch_string(&self) -> String {
        let mut s = String::new();
        for (k, kind) in CELLS.iter().enumerate() {
            s.push_str(kind);
            s.push('[');
            let nodes: Vec<String> = self
                .cell(k)
                .nodes()
                .iter()
                .map(|[a, b]| format!("{}~{}+{}~{}", a.op.name(), a.input, b.op.name(), b.input))
                .collect();
            s.push_str(&nodes.join("|"));
            s.push(']');
        }
        s
    }
}

/// A node's possible (slot 0, slot 1) choices in the study's enumeration order: the product
/// op0 x input0 x op1 x input1 (ops in [`OPS`] order, inputs ascending) without input0 ==
/// input1. Node `n` has 49 n (n - 1) of them.
pub fn node_choices(node: usize) -> Vec<[Slot; 2]> {
    let mut v = Vec::with_capacity(49 * node * (node - 1));
    for op0 in Op::ALL {
        for in0 in 0..node as u8 {
            for op1 in Op::ALL {
                for in1 in 0..node as u8 {
                    if in0 != in1 {
                        v.push([
                            Slot {
                                op: op0,
                                input: in0,
                            },
                            Slot {
                                op: op1,
                                input: in1,
                            },
                        ]);
                    }
                }
            }
        }
    }
    v
}

/// The space (no enumerated archset: about 2.8e20 architectures).
pub struct Darts {
    /// [`node_choices`] of nodes 2..5.
    choices: Vec<Vec<[Slot; 2]>>,
}

impl Default for Darts {
    fn default() -> Self {
        Self::new()
    }
}

impl Darts {
    pub fn new() -> Self {
        Self {
            choices: NODES.map(node_choices).collect(),
        }
    }
}

fn key(cell: &str, node: usize, slot: usize, what: &str) -> String {
    format!("{cell}/{node}/{slot}/{what}")
}

/// Every key of the encoding, in sorted order.
pub fn keys() -> Vec<String> {
    let mut v = vec![];
    for cell in CELLS {
        for node in NODES {
            for slot in 0..2 {
                v.push(key(cell, node, slot, "input"));
                v.push(key(cell, node, slot, "op"));
            }
        }
    }
    v
}

impl Space for Darts {
    type Arch = Arch;
    const KIND: &'static str = "darts";
    const LAST_EVAL_INTERMEDIATE: bool = true;

    fn encode(arch: &Arch) -> serde_json::Value {
        // Inserted in sorted key order, which is also serde_json's own map order.
        let mut m = serde_json::Map::new();
        for (k, cell) in CELLS.iter().enumerate() {
            for node in NODES {
                for (slot, s) in arch.cell(k).node(node).iter().enumerate() {
                    m.insert(key(cell, node, slot, "input"), s.input.into());
                    m.insert(key(cell, node, slot, "op"), s.op.name().into());
                }
            }
        }
        serde_json::Value::Object(m)
    }

    fn decode(value: &serde_json::Value) -> anyhow::Result<Arch> {
        let obj = value
            .as_object()
            .context("DARTS arch must be a JSON object")?;
        let want = keys();
        let want_set: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        let missing: Vec<&str> = want
            .iter()
            .map(String::as_str)
            .filter(|k| !obj.contains_key(*k))
            .collect();
        let extra: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !want_set.contains(k))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            bail!(
                "DARTS arch has the wrong keys: missing {missing:?}, unexpected {extra:?} (expected the 32 keys normal/2/0/op ... reduce/5/1/input)"
            );
        }
        let mut cells = vec![];
        for cell in CELLS {
            let mut nodes = [[Slot {
                op: Op::MaxPool3x3,
                input: 0,
            }; 2]; 4];
            for node in NODES {
                for (slot, target) in nodes[node - 2].iter_mut().enumerate() {
                    let ko = key(cell, node, slot, "op");
                    let v = &obj[&ko];
                    let name = v
                        .as_str()
                        .with_context(|| format!("DARTS arch key {ko:?}: {v} is not an op name"))?;
                    let op = Op::from_name(name).with_context(|| {
                        format!("DARTS arch key {ko:?}: unknown op {name:?} (one of {OPS:?})")
                    })?;
                    let ki = key(cell, node, slot, "input");
                    let v = &obj[&ki];
                    let input = v.as_u64().with_context(|| {
                        format!("DARTS arch key {ki:?}: {v} is not a non-negative integer")
                    })?;
                    if input >= node as u64 {
                        bail!("DARTS arch key {ki:?}: input {input} is out of range (node {node} takes states 0..{})", node - 1);
                    }
                    *target = Slot {
                        op,
                        input: input as u8,
                    };
                }
            }
            cells.push(Cell::new(cell, nodes).map_err(|e| anyhow::anyhow!("DARTS arch: {e}"))?);
        }
        Ok(Arch {
            normal: cells[0],
            reduce: cells[1],
        })
    }

    fn arch_string(arch: &Arch) -> String {
        arch.to_arch_string()
    }

    fn archset(&self) -> Option<&[Arch]> {
        None
    }

    /// As the study's mutator: for each node in sorted key order (normal/2 ... reduce/5), one
    /// uniform index into its [`node_choices`].
    fn sample(&self, rng: &mut Rng) -> Arch {
        let mut cells = [[[Slot {
            op: Op::MaxPool3x3,
            input: 0,
        }; 2]; 4]; 2];
        for cell in cells.iter_mut() {
            for (k, list) in self.choices.iter().enumerate() {
                cell[k] = list[rng.random_range(0..list.len() as u64) as usize];
            }
        }
        // Every entry of `node_choices` is a valid node, so these cannot fail.
        let mk = |kind, nodes| Cell::new(kind, nodes).unwrap_or_else(|e| unreachable!("{e}"));
        Arch {
            normal: mk("normal", cells[0]),
            reduce: mk("reduce", cells[1]),
        }
    }

    /// One factor per node (sorted key order), its keys `op`, `input` of slot 0 then slot 1:
    /// the study's product op0 x input0 x op1 x input1 without input0 == input1, which is
    /// [`node_choices`] in order. The study prunes ops by NAME and inputs by index.
    fn factors(&self) -> Option<super::factors::Factors> {
        use super::factors::{Draw, Factor, Factors};
        let ops: Vec<serde_json::Value> = OPS.iter().map(|&o| o.into()).collect();
        let mut factors = vec![];
        for cell in CELLS {
            for node in NODES {
                let inputs: Vec<serde_json::Value> = (0..node as u64).map(Into::into).collect();
                factors.push(Factor::new(
                    format!("{cell}/{node}"),
                    vec![
                        key(cell, node, 0, "op"),
                        key(cell, node, 0, "input"),
                        key(cell, node, 1, "op"),
                        key(cell, node, 1, "input"),
                    ],
                    vec![ops.clone(), inputs.clone(), ops.clone(), inputs],
                    vec![(1, 3)],
                ));
            }
        }
        Some(Factors::new(factors, Draw::U64))
    }

    /// FairNAS permutes the 7 ops of every (node, slot), whose weights are shared by all input
    /// choices; the inputs (2 to 5 choices by node) come from the architecture each path
    /// samples, as the study's NB101 multipath takes the input masks of a sampled architecture.
    fn fair_keys() -> Option<Vec<String>> {
        Some(keys().into_iter().filter(|k| k.ends_with("/op")).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// FLOPs and parameters

/// FLOPs and parameters of `arch` in a network of `channels` C, `layers` cells and `classes`
/// outputs on a 1x3x32x32 input, counted as the study's `flops_counter`: per leaf module that
/// ran in eval mode, a conv counts C_in x output elements x k^2 / groups, a linear in x out,
/// anything else 0; parameters are those of the modules that ran (BN affine included; the
/// auxiliary head does not run in eval mode). Quirk reproduced: the first depthwise conv of
/// sep/dil convs is a `Conv2d` subclass the counter does not recognise, so it adds parameters
/// but no FLOPs.
pub fn count_cost(channels: usize, layers: usize, classes: usize, arch: &Arch) -> Cost {
    let c = channels as u64;
    let mut flops = 0u64;
    let mut params = 0u64;
    // Stem: conv3x3 3 -> 3C on 32x32, BN.
    let mut h = 32u64;
    flops += 3 * (3 * c * h * h) * 9;
    params += 3 * c * 3 * 9 + 2 * 3 * c;
    let (mut c_pp, mut c_p, mut c_cur) = (3 * c, 3 * c, c);
    let mut reduction_prev = false;
    for i in 0..layers {
        let reduction = i == layers / 3 || i == 2 * layers / 3;
        if reduction {
            c_cur *= 2;
        }
        let half = c_cur / 2;
        if reduction_prev {
            // FactorizedReduce of s0 (at 2h) to h: two 1x1 stride-2 convs of C_cur / 2 each.
            flops += 2 * c_pp * half * h * h;
            params += 2 * c_pp * half + 2 * c_cur;
        } else {
            flops += c_pp * c_cur * h * h;
            params += c_pp * c_cur + 2 * c_cur;
        }
        flops += c_p * c_cur * h * h;
        params += c_p * c_cur + 2 * c_cur;
        let ho = if reduction { h / 2 } else { h };
        let cell = if reduction {
            &arch.reduce
        } else {
            &arch.normal
        };
        let cc = c_cur;
        let out = ho * ho;
        for slots in cell.nodes() {
            for s in slots {
                let stride2 = reduction && s.input < 2;
                match s.op {
                    Op::MaxPool3x3 | Op::AvgPool3x3 => {}
                    Op::SkipConnect => {
                        if stride2 {
                            flops += 2 * cc * half * out;
                            params += 2 * cc * half + 2 * cc;
                        }
                    }
                    Op::SepConv3x3 | Op::SepConv5x5 => {
                        let k = if s.op == Op::SepConv3x3 { 3 } else { 5 };
                        // dw1 (uncounted FLOPs), pw1, BN, dw2, pw2, BN.
                        flops += cc * cc * out + cc * out * k * k + cc * cc * out;
                        params += 2 * (cc * k * k + cc * cc + 2 * cc);
                    }
                    Op::DilConv3x3 | Op::DilConv5x5 => {
                        let k = if s.op == Op::DilConv3x3 { 3 } else { 5 };
                        // dw (uncounted FLOPs), pw, BN.
                        flops += cc * cc * out;
                        params += cc * k * k + cc * cc + 2 * cc;
                    }
                }
            }
        }
        c_pp = c_p;
        c_p = 4 * c_cur;
        reduction_prev = reduction;
        h = ho;
    }
    let k = classes as u64;
    flops += c_p * k;
    params += c_p * k + k;
    Cost { flops, params }
}

// ---------------------------------------------------------------------------------------------
// Supernet

fn conv(
    p: &Path,
    rng: &mut Rng,
    c_in: usize,
    c_out: usize,
    k: usize,
    params: ConvParams,
) -> Result<Conv2d> {
    let w = init::pytorch_default_weight(rng, &[c_out, c_in / params.groups, k, k], p.device())?;
    Conv2d::new(p, w, None, params)
}

fn bn(p: &Path, c: usize) -> Result<BatchNorm> {
    BatchNorm::new(p, c, true, BN_MOMENTUM, BN_EPS)
}

/// ReLU, 1x1 conv, BN (the cells' preprocessing).
struct ReluConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ReluConvBn {
    fn new(p: &Path, rng: &mut Rng, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(&p.pp("conv"), rng, c_in, c_out, 1, ConvParams::default())?,
            bn: bn(&p.pp("bn"), c_out)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.bn
            .forward(&self.conv.forward(&nn::activation::relu(x)?)?, mode)
    }
}

/// A depthwise conv whose stride is chosen per call (the study's `DynamicConv2d`): the same
/// weights run at stride 1 or 2 depending on which state feeds the op.
struct DynamicDepthwise {
    conv: Conv2d,
}

impl DynamicDepthwise {
    fn new(p: &Path, rng: &mut Rng, c: usize, k: usize, dilation: usize) -> Result<Self> {
        let params = ConvParams {
            stride: 1,
            padding: dilation * (k - 1) / 2,
            dilation,
            groups: c,
        };
        Ok(Self {
            conv: conv(p, rng, c, c, k, params)?,
        })
    }

    fn forward(&self, x: &Tensor, stride: usize) -> Result<Tensor> {
        let params = ConvParams {
            stride,
            ..self.conv.params
        };
        self.conv.forward_with(x, params)
    }
}

/// sep_conv kxk: (ReLU, depthwise kxk, pointwise, BN) twice; the stride on the first
/// depthwise conv only.
struct SepConv {
    dw1: DynamicDepthwise,
    pw1: Conv2d,
    bn1: BatchNorm,
    dw2: Conv2d,
    pw2: Conv2d,
    bn2: BatchNorm,
}

impl SepConv {
    fn new(p: &Path, rng: &mut Rng, c: usize, k: usize) -> Result<Self> {
        let dw = ConvParams {
            stride: 1,
            padding: (k - 1) / 2,
            dilation: 1,
            groups: c,
        };
        Ok(Self {
            dw1: DynamicDepthwise::new(&p.pp("dw1"), rng, c, k, 1)?,
            pw1: conv(&p.pp("pw1"), rng, c, c, 1, ConvParams::default())?,
            bn1: bn(&p.pp("bn1"), c)?,
            dw2: conv(&p.pp("dw2"), rng, c, c, k, dw)?,
            pw2: conv(&p.pp("pw2"), rng, c, c, 1, ConvParams::default())?,
            bn2: bn(&p.pp("bn2"), c)?,
        })
    }

    fn forward(&self, x: &Tensor, stride: usize, mode: Mode) -> Result<Tensor> {
        let relu = nn::activation::relu;
        let y = self.dw1.forward(&relu(x)?, stride)?;
        let y = self.bn1.forward(&self.pw1.forward(&y)?, mode)?;
        let y = self.dw2.forward(&relu(&y)?)?;
        self.bn2.forward(&self.pw2.forward(&y)?, mode)
    }
}

/// dil_conv kxk: ReLU, depthwise kxk with dilation 2, pointwise, BN.
struct DilConv {
    dw: DynamicDepthwise,
    pw: Conv2d,
    bn: BatchNorm,
}

impl DilConv {
    fn new(p: &Path, rng: &mut Rng, c: usize, k: usize) -> Result<Self> {
        Ok(Self {
            dw: DynamicDepthwise::new(&p.pp("dw"), rng, c, k, 2)?,
            pw: conv(&p.pp("pw"), rng, c, c, 1, ConvParams::default())?,
            bn: bn(&p.pp("bn"), c)?,
        })
    }

    fn forward(&self, x: &Tensor, stride: usize, mode: Mode) -> Result<Tensor> {
        let y = self.dw.forward(&nn::activation::relu(x)?, stride)?;
        self.bn.forward(&self.pw.forward(&y)?, mode)
    }
}

/// One (node, slot)'s candidate ops holding weights, shared by every input choice.
struct SlotOps {
    sep3: SepConv,
    sep5: SepConv,
    dil3: DilConv,
    dil5: DilConv,
    /// `skip_connect` at stride 2 (only reduction cells ever run one; the reference also
    /// builds it, unused, in normal cells).
    skip: Option<FactorizedReduce>,
}

impl SlotOps {
    fn new(p: &Path, rng: &mut Rng, c: usize, reduction: bool) -> Result<Self> {
        let skip = if reduction {
            Some(FactorizedReduce::new(
                &p.pp("skip_connect"),
                rng,
                c,
                c,
                BN_MOMENTUM,
                BN_EPS,
            )?)
        } else {
            None
        };
        Ok(Self {
            sep3: SepConv::new(&p.pp("sep_conv_3x3"), rng, c, 3)?,
            sep5: SepConv::new(&p.pp("sep_conv_5x5"), rng, c, 5)?,
            dil3: DilConv::new(&p.pp("dil_conv_3x3"), rng, c, 3)?,
            dil5: DilConv::new(&p.pp("dil_conv_5x5"), rng, c, 5)?,
            skip,
        })
    }

    /// `op` on `x` at `stride`, with drop-path on the output of every op but an identity skip.
    fn forward(&self, op: Op, x: &Tensor, stride: usize, ctx: &mut Ctx) -> Result<Tensor> {
        let mode = ctx.mode;
        let y = match op {
            Op::MaxPool3x3 => nn::pool::max_pool2d(x, 3, stride, 1)?,
            Op::AvgPool3x3 => nn::pool::avg_pool2d(x, 3, stride, 1, false)?,
            Op::SkipConnect if stride == 1 => return Ok(x.clone()),
            Op::SkipConnect => match &self.skip {
                Some(fr) => fr.forward(x, mode)?,
                None => candle_core::bail!("skip_connect at stride 2 outside a reduction cell"),
            },
            Op::SepConv3x3 => self.sep3.forward(x, stride, mode)?,
            Op::SepConv5x5 => self.sep5.forward(x, stride, mode)?,
            Op::DilConv3x3 => self.dil3.forward(x, stride, mode)?,
            Op::DilConv5x5 => self.dil5.forward(x, stride, mode)?,
        };
        // The reference's DropPath_ acts in training mode only (`self.training`), which
        // includes BN recalibration.
        if mode != Mode::Eval && ctx.drop_path > 0.0 {
            nn::drop_path::drop_path(&y, ctx.drop_path, ctx.rng)
        } else {
            Ok(y)
        }
    }
}

enum Preprocess0 {
    Reduce(FactorizedReduce),
    Plain(ReluConvBn),
}

/// One cell of the supernet with the weights of every op of every (node, slot).
pub struct DartsCell {
    reduction: bool,
    pre0: Preprocess0,
    pre1: ReluConvBn,
    /// `slots[k][s]`: node k + 2, slot s.
    slots: Vec<[SlotOps; 2]>,
}

impl DartsCell {
    /// A cell of `c` channels per node taking s0 with `c_pp` channels (at twice the size of s1
    /// when `reduction_prev`) and s1 with `c_p`; its output has 4 `c` channels, at half the
    /// size when `reduction`. Tensors are named `preprocess0.*`, `preprocess1.*` and
    /// `nodes.<node>.<slot>.<op>.*` under `path`; weights drawn from `rng` in that order.
    pub fn new(
        path: &Path,
        rng: &mut Rng,
        c_pp: usize,
        c_p: usize,
        c: usize,
        reduction: bool,
        reduction_prev: bool,
    ) -> Result<Self> {
        let pre0 = if reduction_prev {
            Preprocess0::Reduce(FactorizedReduce::new(
                &path.pp("preprocess0"),
                rng,
                c_pp,
                c,
                BN_MOMENTUM,
                BN_EPS,
            )?)
        } else {
            Preprocess0::Plain(ReluConvBn::new(&path.pp("preprocess0"), rng, c_pp, c)?)
        };
        let pre1 = ReluConvBn::new(&path.pp("preprocess1"), rng, c_p, c)?;
        let mut slots = vec![];
        for node in NODES {
            let a = SlotOps::new(&path.pp(format!("nodes.{node}.0")), rng, c, reduction)?;
            let b = SlotOps::new(&path.pp(format!("nodes.{node}.1")), rng, c, reduction)?;
            slots.push([a, b]);
        }
        Ok(Self {
            reduction,
            pre0,
            pre1,
            slots,
        })
    }

    /// Whether this is a reduction cell.
    pub fn reduction(&self) -> bool {
        self.reduction
    }

    /// The cell's output for the states `s0`, `s1` (only `cell`'s ops run).
    pub fn forward(&self, s0: &Tensor, s1: &Tensor, cell: &Cell, ctx: &mut Ctx) -> Result<Tensor> {
        let mode = ctx.mode;
        let s0 = match &self.pre0 {
            Preprocess0::Reduce(fr) => fr.forward(s0, mode)?,
            Preprocess0::Plain(p) => p.forward(s0, mode)?,
        };
        let s1 = self.pre1.forward(s1, mode)?;
        let mut states = vec![s0, s1];
        for (k, ops) in self.slots.iter().enumerate() {
            let mut sum: Option<Tensor> = None;
            for (slot, o) in cell.node(k + 2).iter().zip(ops) {
                let i = slot.input as usize;
                let stride = if self.reduction && i < 2 { 2 } else { 1 };
                let y = o.forward(slot.op, &states[i], stride, ctx)?;
                sum = Some(match sum {
                    None => y,
                    Some(a) => (a + y)?,
                });
            }
            match sum {
                Some(s) => states.push(s),
                None => candle_core::bail!("internal: a DARTS node without slots"),
            }
        }
        Tensor::cat(&states[2..], 1)
    }
}

/// The auxiliary head on the 8x8 output of cell 2 * layers / 3: ReLU, 5x5 average pool with
/// stride 3 (to 2x2), 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, linear.
struct AuxHead {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    classifier: Linear,
}

impl AuxHead {
    fn new(p: &Path, rng: &mut Rng, c: usize, classes: usize) -> Result<Self> {
        let conv1 = conv(&p.pp("conv1"), rng, c, 128, 1, ConvParams::default())?;
        let bn1 = bn(&p.pp("bn1"), 128)?;
        let conv2 = conv(&p.pp("conv2"), rng, 128, 768, 2, ConvParams::default())?;
        let bn2 = bn(&p.pp("bn2"), 768)?;
        let w = init::pytorch_default_weight(rng, &[classes, 768], p.device())?;
        let b = init::pytorch_default_bias(rng, 768, classes, p.device())?;
        let classifier = Linear::new(&p.pp("classifier"), w, Some(b))?;
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            classifier,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let relu = nn::activation::relu;
        let y = nn::pool::avg_pool2d(&relu(x)?, 5, 3, 0, false)?;
        let y = relu(&self.bn1.forward(&self.conv1.forward(&y)?, mode)?)?;
        let y = relu(&self.bn2.forward(&self.conv2.forward(&y)?, mode)?)?;
        self.classifier.forward(&y.flatten_from(1)?)
    }
}

/// The DARTS-CIFAR10 supernet: stem conv3x3 3 -> 3C + BN, `layers` cells with reductions at
/// layers / 3 and 2 * layers / 3 (channels doubled), auxiliary head after the second
/// reduction (training and recalibration only), final pooling, linear classifier.
pub struct DartsNet {
    stem: Conv2d,
    stem_bn: BatchNorm,
    cells: Vec<DartsCell>,
    /// The cell after which the auxiliary head runs, and the head (absent with weight 0).
    aux: Option<(usize, AuxHead)>,
    classifier: Linear,
    final_pool: FinalPool,
    aux_weight: f64,
    drop_path: f64,
    channels: usize,
    layers: usize,
    classes: usize,
}

impl DartsNet {
    /// Builds the supernet, drawing every initial weight from `rng` (PyTorch default init) in
    /// construction order: stem, cells (preprocessing, then per node and slot the ops in
    /// [`OPS`] order), auxiliary head, classifier.
    pub fn new(root: &Path, cfg: &DartsSpace, classes: usize, rng: &mut Rng) -> Result<Self> {
        let c = cfg.channels;
        let layers = cfg.layers;
        if layers < 5 {
            candle_core::bail!("DARTS supernet: layers must be >= 5, got {layers}");
        }
        let stem_params = ConvParams {
            padding: 1,
            ..ConvParams::default()
        };
        let stem = conv(&root.pp("stem.conv"), rng, 3, 3 * c, 3, stem_params)?;
        let stem_bn = bn(&root.pp("stem.bn"), 3 * c)?;
        let (mut c_pp, mut c_p, mut c_cur) = (3 * c, 3 * c, c);
        let mut reduction_prev = false;
        let mut cells = vec![];
        let mut aux = None;
        for i in 0..layers {
            let reduction = i == layers / 3 || i == 2 * layers / 3;
            if reduction {
                c_cur *= 2;
            }
            cells.push(DartsCell::new(
                &root.pp(format!("cells.{i}")),
                rng,
                c_pp,
                c_p,
                c_cur,
                reduction,
                reduction_prev,
            )?);
            reduction_prev = reduction;
            c_pp = c_p;
            c_p = 4 * c_cur;
            if i == 2 * layers / 3 && cfg.auxiliary_weight > 0.0 {
                aux = Some((i, AuxHead::new(&root.pp("aux"), rng, c_p, classes)?));
            }
        }
        let w = init::pytorch_default_weight(rng, &[classes, c_p], root.device())?;
        let b = init::pytorch_default_bias(rng, c_p, classes, root.device())?;
        let classifier = Linear::new(&root.pp("classifier"), w, Some(b))?;
        Ok(Self {
            stem,
            stem_bn,
            cells,
            aux,
            classifier,
            final_pool: cfg.final_pool,
            aux_weight: cfg.auxiliary_weight,
            drop_path: cfg.drop_path,
            channels: c,
            layers,
            classes,
        })
    }
}

impl Supernet for DartsNet {
    type Arch = Arch;

    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Output> {
        let s = self.stem_bn.forward(&self.stem.forward(x)?, ctx.mode)?;
        let (mut s0, mut s1) = (s.clone(), s);
        let mut aux_logits = None;
        for (i, cell) in self.cells.iter().enumerate() {
            let kind = if cell.reduction {
                &arch.reduce
            } else {
                &arch.normal
            };
            let out = cell.forward(&s0, &s1, kind, ctx)?;
            s0 = std::mem::replace(&mut s1, out);
            if let Some((at, head)) = &self.aux {
                // The reference runs the head whenever the model is in training mode, BN
                // recalibration included.
                if *at == i && ctx.mode != Mode::Eval {
                    aux_logits = Some(head.forward(&s1, ctx.mode)?);
                }
            }
        }
        let pooled = match self.final_pool {
            FinalPool::Avg7 => nn::pool::avg_pool2d(&s1, 7, 7, 0, true)?.flatten_from(1)?,
            FinalPool::Global => nn::pool::global_avg_pool(&s1)?,
        };
        let logits = self.classifier.forward(&pooled)?;
        Ok(Output { logits, aux_logits })
    }

    fn aux_weight(&self) -> f64 {
        if self.aux.is_some() {
            self.aux_weight
        } else {
            0.0
        }
    }

    fn drop_path(&self, epoch: usize, epochs: usize) -> f64 {
        if epochs == 0 {
            0.0
        } else {
            self.drop_path * epoch as f64 / epochs as f64
        }
    }

    fn cost(&self, arch: &Arch) -> Option<Cost> {
        Some(count_cost(self.channels, self.layers, self.classes, arch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::benchmark;

    fn bench(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benchmarks")
            .join(name)
    }

    const FIRST_ROW: &str = r#"{"normal/2/0/input":1,"normal/2/0/op":"avg_pool_3x3","normal/2/1/input":0,"normal/2/1/op":"dil_conv_3x3","normal/3/0/input":0,"normal/3/0/op":"skip_connect","normal/3/1/input":2,"normal/3/1/op":"sep_conv_3x3","normal/4/0/input":1,"normal/4/0/op":"dil_conv_5x5","normal/4/1/input":0,"normal/4/1/op":"max_pool_3x3","normal/5/0/input":1,"normal/5/0/op":"sep_conv_3x3","normal/5/1/input":3,"normal/5/1/op":"avg_pool_3x3","reduce/2/0/input":0,"reduce/2/0/op":"dil_conv_5x5","reduce/2/1/input":1,"reduce/2/1/op":"avg_pool_3x3","reduce/3/0/input":0,"reduce/3/0/op":"sep_conv_3x3","reduce/3/1/input":1,"reduce/3/1/op":"sep_conv_3x3","reduce/4/0/input":0,"reduce/4/0/op":"dil_conv_5x5","reduce/4/1/input":3,"reduce/4/1/op":"avg_pool_3x3","reduce/5/0/input":1,"reduce/5/0/op":"avg_pool_3x3","reduce/5/1/input":3,"reduce/5/1/op":"sep_conv_3x3"}"#;

    /// The raw `architecture` strings of a benchmark CSV with their other columns.
    fn raw_rows(name: &str) -> Vec<csv::StringRecord> {
        let mut rdr = csv::Reader::from_path(bench(name)).unwrap();
        rdr.records().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn benchmark_rows_round_trip_byte_for_byte() {
        for name in ["darts-cifar10.csv", "darts-cifar10-seed43.csv"] {
            let rows = raw_rows(name);
            assert_eq!(
                rows.len(),
                if name == "darts-cifar10.csv" {
                    377
                } else {
                    101
                }
            );
            for r in &rows {
                let v: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
                let a = Darts::decode(&v).unwrap();
                assert_eq!(Darts::encode(&a).to_string(), &r[0], "{name}");
            }
        }
        let a = Darts::decode(&serde_json::from_str(FIRST_ROW).unwrap()).unwrap();
        assert_eq!(
            a.normal.node(3)[0],
            Slot {
                op: Op::SkipConnect,
                input: 0
            }
        );
        assert_eq!(
            a.reduce.node(5)[1],
            Slot {
                op: Op::SepConv3x3,
                input: 3
            }
        );
        assert_eq!(
            a.to_arch_string(),
            "normal[avg_pool_3x3~1+dil_conv_3x3~0|skip_connect~0+sep_conv_3x3~2|dil_conv_5x5~1+max_pool_3x3~0|sep_conv_3x3~1+avg_pool_3x3~3]\
             reduce[dil_conv_5x5~0+avg_pool_3x3~1|sep_conv_3x3~0+sep_conv_3x3~1|dil_conv_5x5~0+avg_pool_3x3~3|avg_pool_3x3~1+sep_conv_3x3~3]"
        );
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(FIRST_ROW).unwrap();
        v.as_object_mut().unwrap().insert(key.into(), value);
        v
    }

    fn decode_err(v: &serde_json::Value) -> String {
        format!("{:#}", Darts::decode(v).unwrap_err())
    }

    #[test]
    fn decode_errors_name_what_is_wrong() {
        let e = decode_err(&with("normal/3/1/op", "conv_7x7".into()));
        assert!(
            e.contains("unknown op \"conv_7x7\"") && e.contains("normal/3/1/op"),
            "{e}"
        );
        let e = decode_err(&with("normal/3/1/op", 3.into()));
        assert!(e.contains("is not an op name"), "{e}");
        // normal/2 takes states 0 and 1 only.
        let e = decode_err(&with("normal/2/0/input", 2.into()));
        assert!(
            e.contains("normal/2/0/input") && e.contains("out of range"),
            "{e}"
        );
        let e = decode_err(&with("reduce/5/1/input", (-1).into()));
        assert!(e.contains("reduce/5/1/input"), "{e}");
        // normal/3: slot 0 takes 0; setting slot 1 to 0 too.
        let e = decode_err(&with("normal/3/1/input", 0.into()));
        assert!(e.contains("normal/3") && e.contains("must differ"), "{e}");
        let e = decode_err(&with("normal/6/0/op", "skip_connect".into()));
        assert!(
            e.contains("wrong keys") && e.contains("unexpected [\"normal/6/0/op\"]"),
            "{e}"
        );
        let mut v: serde_json::Value = serde_json::from_str(FIRST_ROW).unwrap();
        v.as_object_mut().unwrap().remove("reduce/4/0/input");
        let e = decode_err(&v);
        assert!(e.contains("missing [\"reduce/4/0/input\"]"), "{e}");
        assert!(Darts::decode(&serde_json::json!([1, 2])).is_err());
        // The typed constructor refuses the same states.
        let s = |op, input| Slot { op, input };
        let good = [
            [s(Op::SkipConnect, 0), s(Op::SkipConnect, 1)],
            [s(Op::SkipConnect, 0), s(Op::SkipConnect, 2)],
            [s(Op::SkipConnect, 3), s(Op::SkipConnect, 2)],
            [s(Op::SkipConnect, 4), s(Op::SkipConnect, 0)],
        ];
        assert!(Cell::new("normal", good).is_ok());
        let mut bad = good;
        bad[2][1].input = 3;
        assert_eq!(
            Cell::new("normal", bad),
            Err(ArchError::SameInputs {
                cell: "normal",
                node: 4,
                input: 3
            })
        );
        bad = good;
        bad[0][0].input = 2;
        assert!(matches!(
            Cell::new("reduce", bad),
            Err(ArchError::InputOutOfRange {
                node: 2,
                slot: 0,
                ..
            })
        ));
    }

    #[test]
    fn benchmark_reader_rejects_bad_rows_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = FIRST_ROW.replace('"', "\"\"");
        let bad = FIRST_ROW
            .replace(r#""normal/4/1/input":0"#, r#""normal/4/1/input":1"#)
            .replace('"', "\"\"");
        let p = dir.path().join("b.csv");
        std::fs::write(
            &p,
            format!("architecture,accuracy\n\"{good}\",0.97\n\"{bad}\",0.96\n"),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            benchmark::read::<Darts>(&p, "accuracy").unwrap_err()
        );
        assert!(
            e.contains("b.csv:3") && e.contains("normal/4") && e.contains("must differ"),
            "{e}"
        );
        let bad = FIRST_ROW
            .replace("max_pool_3x3", "max_pool_5x5")
            .replace('"', "\"\"");
        std::fs::write(
            &p,
            format!("architecture,accuracy\n\"{good}\",0.97\n\"{bad}\",0.96\n"),
        )
        .unwrap();
        let e = format!(
            "{:#}",
            benchmark::read::<Darts>(&p, "accuracy").unwrap_err()
        );
        assert!(
            e.contains("b.csv:3") && e.contains("unknown op \"max_pool_5x5\""),
            "{e}"
        );
        let t = benchmark::read::<Darts>(&bench("darts-cifar10.csv"), "accuracy").unwrap();
        assert_eq!(t.rows.len(), 377);
        assert_eq!(
            t.extra_columns,
            vec!["flops".to_string(), "params".to_string()]
        );
        assert_eq!(t.rows[0].score, 0.9725);
    }

    #[test]
    fn flops_and_params_match_all_benchmark_rows() {
        let mut worst = 0f64;
        let mut exact = 0;
        let rows = raw_rows("darts-cifar10.csv");
        for r in &rows {
            let a = Darts::decode(&serde_json::from_str(&r[0]).unwrap()).unwrap();
            let c = count_cost(36, 20, 10, &a);
            let flops: f64 = r[2].parse().unwrap();
            let params: f64 = r[3].parse().unwrap();
            let e = ((c.flops as f64 - flops) / flops)
                .abs()
                .max(((c.params as f64 - params) / params).abs());
            worst = worst.max(e);
            if c.flops as f64 == flops && c.params as f64 == params {
                exact += 1;
            }
        }
        assert!(worst < 0.01, "worst relative difference {worst}");
        // The study's counter is reproduced exactly, not only within 1%.
        assert_eq!(exact, rows.len(), "worst relative difference {worst}");
        let a = Darts::decode(&serde_json::from_str(FIRST_ROW).unwrap()).unwrap();
        assert_eq!(
            count_cost(36, 20, 10, &a),
            Cost {
                flops: 399_547_008,
                params: 2_707_174
            }
        );
    }

    fn randn(dims: &[usize], seed: u64) -> Tensor {
        init::normal(
            &mut crate::rng::stream(seed, "x", &[]),
            dims,
            1.0,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    }

    #[test]
    fn drop_path_drops_whole_samples_of_op_outputs_but_not_identity_skips() {
        let store = nn::Store::new(&candle_core::Device::Cpu);
        let mut r = crate::rng::stream(0, "init", &[]);
        let ops = SlotOps::new(&store.root(), &mut r, 4, true).unwrap();
        let x = randn(&[64, 4, 6, 6], 1);
        let p = 0.4;
        let plain = nn::pool::max_pool2d(&x, 3, 1, 1).unwrap();
        let mut dr = crate::rng::stream(0, "drop", &[]);
        let mut ctx = Ctx {
            mode: Mode::Train,
            drop_path: p,
            rng: &mut dr,
        };
        let y = ops.forward(Op::MaxPool3x3, &x, 1, &mut ctx).unwrap();
        let (mut kept, mut dropped) = (0, 0);
        for n in 0..64 {
            let yn = y
                .get(n)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let pn = plain
                .get(n)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            if yn.iter().all(|&v| v == 0.0) {
                dropped += 1;
            } else {
                assert!(yn.iter().zip(&pn).all(|(a, b)| (a - b / 0.6).abs() < 1e-5));
                kept += 1;
            }
        }
        assert!(kept > 20 && dropped > 10, "kept {kept} dropped {dropped}");
        // An identity skip is never dropped and takes no draw; a stride-2 skip is an op.
        let before = crate::rng::save_state(ctx.rng);
        let id = ops.forward(Op::SkipConnect, &x, 1, &mut ctx).unwrap();
        assert_eq!(crate::rng::save_state(ctx.rng), before);
        assert_eq!(
            id.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        ops.forward(Op::SkipConnect, &x, 2, &mut ctx).unwrap();
        assert_ne!(crate::rng::save_state(ctx.rng), before);
        // Recalibration is train mode: drop-path active; evaluation: none.
        ctx.mode = Mode::Recalibrate;
        let before = crate::rng::save_state(ctx.rng);
        ops.forward(Op::SepConv3x3, &x, 1, &mut ctx).unwrap();
        assert_ne!(crate::rng::save_state(ctx.rng), before);
        ctx.mode = Mode::Eval;
        let before = crate::rng::save_state(ctx.rng);
        let e = ops.forward(Op::AvgPool3x3, &x, 2, &mut ctx).unwrap();
        assert_eq!(crate::rng::save_state(ctx.rng), before);
        assert_eq!(e.dims(), &[64, 4, 3, 3]);
        // Normal cells hold no stride-2 skip.
        let normal = SlotOps::new(&store.root().pp("n"), &mut r, 4, false).unwrap();
        assert!(normal.forward(Op::SkipConnect, &x, 2, &mut ctx).is_err());
    }

    #[test]
    fn aux_head_runs_in_training_and_recalibration_only() {
        let cfg = |aux: f64, final_pool| DartsSpace {
            channels: 2,
            layers: 5,
            auxiliary_weight: aux,
            drop_path: 0.2,
            final_pool,
        };
        let store = nn::Store::new(&candle_core::Device::Cpu);
        let mut r = crate::rng::stream(0, "init", &[]);
        let net = DartsNet::new(&store.root(), &cfg(0.4, FinalPool::Avg7), 10, &mut r).unwrap();
        let arch = Darts::new().sample(&mut crate::rng::stream(0, "sample", &[]));
        let x = randn(&[2, 3, 32, 32], 2);
        for (mode, aux) in [
            (Mode::Train, true),
            (Mode::Recalibrate, true),
            (Mode::Eval, false),
        ] {
            let out = net.forward(&x, &arch, &mut Ctx::new(mode, &mut r)).unwrap();
            assert_eq!(out.logits.dims(), &[2, 10]);
            assert_eq!(
                out.aux_logits.map(|a| a.dims().to_vec()),
                aux.then(|| vec![2, 10])
            );
        }
        assert_eq!(net.aux_weight(), 0.4);
        assert!((net.drop_path(30, 600) - 0.01).abs() < 1e-12);
        assert_eq!(net.drop_path(0, 600), 0.0);
        // Weight 0: no head at all (no tensors), and the global-pool option.
        let store = nn::Store::new(&candle_core::Device::Cpu);
        let net = DartsNet::new(&store.root(), &cfg(0.0, FinalPool::Global), 10, &mut r).unwrap();
        assert!(store.params().iter().all(|(n, _)| !n.starts_with("aux.")));
        let out = net
            .forward(&x, &arch, &mut Ctx::new(Mode::Train, &mut r))
            .unwrap();
        assert!(out.aux_logits.is_none());
        assert_eq!(net.aux_weight(), 0.0);
        // Fewer than 5 cells cannot hold two separate, non-adjacent reduction cells.
        let mut c = cfg(0.4, FinalPool::Avg7);
        c.layers = 4;
        assert!(DartsNet::new(
            &nn::Store::new(&candle_core::Device::Cpu).root(),
            &c,
            10,
            &mut r
        )
        .is_err());
    }

    #[test]
    fn avg7_final_pool_reads_only_the_top_left_7x7_of_the_8x8_map() {
        let x = randn(&[1, 2, 8, 8], 3);
        let a = nn::pool::avg_pool2d(&x, 7, 7, 0, true)
            .unwrap()
            .flatten_all()
            .unwrap();
        let want = x
            .narrow(2, 0, 7)
            .unwrap()
            .narrow(3, 0, 7)
            .unwrap()
            .mean((2, 3))
            .unwrap();
        let d = (a - want.flatten_all().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn sampler_is_uniform_per_node_and_seeded() {
        let space = Darts::new();
        assert_eq!(
            space.choices.iter().map(Vec::len).collect::<Vec<_>>(),
            [98, 294, 588, 980]
        );
        // Product order: op0 slowest, then input0, op1, input1.
        let c3 = node_choices(3);
        assert_eq!(
            c3[0],
            [
                Slot {
                    op: Op::MaxPool3x3,
                    input: 0
                },
                Slot {
                    op: Op::MaxPool3x3,
                    input: 1
                }
            ]
        );
        assert_eq!(
            c3[1],
            [
                Slot {
                    op: Op::MaxPool3x3,
                    input: 0
                },
                Slot {
                    op: Op::MaxPool3x3,
                    input: 2
                }
            ]
        );
        assert_eq!(
            c3[2],
            [
                Slot {
                    op: Op::MaxPool3x3,
                    input: 0
                },
                Slot {
                    op: Op::AvgPool3x3,
                    input: 1
                }
            ]
        );
        assert_eq!(
            c3[14],
            [
                Slot {
                    op: Op::MaxPool3x3,
                    input: 1
                },
                Slot {
                    op: Op::MaxPool3x3,
                    input: 0
                }
            ]
        );
        let mut r = crate::rng::stream(5, "sample", &[]);
        let n = 20_000;
        let mut op_counts = [0usize; 7];
        let mut in_counts = [0usize; 5];
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..n {
            let a = space.sample(&mut r);
            // Valid by construction and round-trips through the encoding.
            assert_eq!(Darts::decode(&Darts::encode(&a)).unwrap(), a);
            let [s0, s1] = a.reduce.node(5);
            op_counts[s0.op as usize] += 1;
            in_counts[s1.input as usize] += 1;
            distinct.insert(a);
        }
        assert_eq!(distinct.len(), n);
        for c in op_counts {
            // Expected n / 7 = 2857, standard deviation ~49.
            assert!((c as f64 - n as f64 / 7.0).abs() < 250.0, "{op_counts:?}");
        }
        for c in in_counts {
            assert!((c as f64 - n as f64 / 5.0).abs() < 300.0, "{in_counts:?}");
        }
        let first = space.sample(&mut crate::rng::stream(5, "sample", &[]));
        let again = space.sample(&mut crate::rng::stream(5, "sample", &[]));
        assert_eq!(first, again);
    }
}
