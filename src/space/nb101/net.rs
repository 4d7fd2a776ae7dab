//! The NB101 (1Shot1 space 3) supernet, after the study's `space/nb101/network.py`.
//!
//! Stem conv3x3-BN-ReLU 3 -> C; `stacks` stacks of `cells_per_stack` cells, a 2x2 max-pool
//! (stride 2) and doubled channels before every stack but the first; global average pooling
//! and a linear classifier (the reference's dropout defaults to 0, an identity, and is left
//! out). A cell going to `out` channels has vertices of `out / 2` channels (`out //
//! num_parents[-1]`): vertex t = 1..5 sums its chosen inputs among [its own 1x1
//! conv-BN-ReLU projection of the cell input, vertex 1, ..., vertex t-1] and applies its op;
//! the output concatenates its two chosen vertices in vertex order, which gives `out`
//! channels. The first cell of a stack takes the previous stack's channels into its
//! projections.
//!
//! Only the sampled path runs, with one exception that is the reference's: every vertex
//! computes its input projection in training (and BN recalibration) even when it does not
//! choose the cell input, so that projection's BatchNorm running statistics move while its
//! output goes nowhere (no gradient reaches it). In evaluation mode an unchosen projection
//! has no effect and is skipped. The output vertex's own projection, which the reference
//! builds but never calls, is not built.
//!
//! Init (the reference's `ConvBnRelu.reset_parameters` and `Nb101Network.reset_parameters`):
//! conv weights truncated normal (+-2 std) with std sqrt(1 / fan_in), BN weight 1 and bias 0,
//! linear Xavier-uniform with bias 0.

use super::{Arch, OPS, OP_VERTICES, VERTICES};
use crate::config::Nb101Space;
use crate::nn::{self, init, Act, BatchNorm, Conv2d, ConvParams, Linear, Mode, Path};
use crate::rng::Rng;
use crate::space::{Ctx, Output, Supernet};
use candle_core::{Result, Tensor};
use rand::Rng as _;

/// conv (no bias) -> BN -> ReLU (the reference's `ConvBnRelu`), stride 1, "same" padding.
struct ConvBnRelu {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(
        p: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        k: usize,
        sc: &Nb101Space,
    ) -> Result<Self> {
        let fan_in = (k * k * c_in) as f64;
        let w =
            init::truncated_normal(rng, &[c_out, c_in, k, k], (1.0 / fan_in).sqrt(), p.device())?;
        let params = ConvParams {
            stride: 1,
            padding: k / 2,
            dilation: 1,
            groups: 1,
        };
        Ok(Self {
            conv: Conv2d::new(&p.pp("conv"), w, None, params)?,
            bn: BatchNorm::new(&p.pp("bn"), c_out, true, sc.bn_momentum, sc.bn_eps)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.bn.forward_act(&self.conv.forward(x)?, mode, Act::Relu)
    }
}

/// One op vertex: its projection of the cell input and its candidate ops that hold weights
/// (`copies` independently initialised copies each with the augmented-space `replicate` trick).
struct Vertex {
    input: ConvBnRelu,
    conv3x3: Vec<ConvBnRelu>,
    conv1x1: Vec<ConvBnRelu>,
}

struct Cell {
    /// Vertices 1..5.
    vertices: Vec<Vertex>,
    copies: usize,
}

/// The copy a vertex uses in one forward call (u64 draw: the same on 32- and 64-bit hosts),
/// drawn for every vertex in order whatever its op, as the reference's replicate mutator draws
/// one per layer choice and call.
pub fn copy_draw(rng: &mut Rng, copies: usize) -> usize {
    rng.random_range(0..copies as u64) as usize
}

impl Cell {
    fn new(
        p: &Path,
        rng: &mut Rng,
        c_in: usize,
        c_out: usize,
        copies: usize,
        sc: &Nb101Space,
    ) -> Result<Self> {
        // `assert out_channels % num_parents[-1] == 0` in the reference; the configuration
        // check refuses odd channels before anything is built.
        if !c_out.is_multiple_of(2) {
            candle_core::bail!(
                "NB101 cell: {c_out} output channels cannot split over 2 output vertices"
            );
        }
        let vc = c_out / 2;
        let mut vertices = vec![];
        for t in 1..=OP_VERTICES {
            let v = p.pp(format!("vertex{t}"));
            let name = |op: &str, c: usize| {
                if c == 0 {
                    op.to_string()
                } else {
                    format!("{op}_copy{c}")
                }
            };
            let input = ConvBnRelu::new(&v.pp("input"), rng, c_in, vc, 1, sc)?;
            let mut conv3x3 = vec![];
            let mut conv1x1 = vec![];
            for c in 0..copies {
                conv3x3.push(ConvBnRelu::new(
                    &v.pp(name("conv3x3", c)),
                    rng,
                    vc,
                    vc,
                    3,
                    sc,
                )?);
            }
            for c in 0..copies {
                conv1x1.push(ConvBnRelu::new(
                    &v.pp(name("conv1x1", c)),
                    rng,
                    vc,
                    vc,
                    1,
                    sc,
                )?);
            }
            vertices.push(Vertex {
                input,
                conv3x3,
                conv1x1,
            });
        }
        Ok(Self { vertices, copies })
    }

    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Tensor> {
        let mode = ctx.mode;
        // states[j - 1] = vertex j.
        let mut states: Vec<Tensor> = Vec::with_capacity(OP_VERTICES);
        for (i, vx) in self.vertices.iter().enumerate() {
            let t = i + 1;
            let takes_input = arch.input_mask(t) & 1 != 0;
            let proj = if takes_input || mode != Mode::Eval {
                Some(vx.input.forward(x, mode)?)
            } else {
                None
            };
            // The chosen inputs in vertex order, summed left to right (Python's `sum`).
            let mut sum: Option<Tensor> = None;
            for j in arch.parents(t) {
                let s = if j == 0 {
                    match &proj {
                        Some(p) => p.clone(),
                        None => candle_core::bail!("NB101 vertex {t}: projection missing"),
                    }
                } else {
                    states[j - 1].clone()
                };
                sum = Some(match sum {
                    None => s,
                    Some(acc) => (acc + s)?,
                });
            }
            let Some(h) = sum else {
                candle_core::bail!("NB101 vertex {t} has no input");
            };
            let c = if self.copies > 1 {
                copy_draw(ctx.rng, self.copies)
            } else {
                0
            };
            let y = match arch.op(t) {
                0 => vx.conv3x3[c].forward(&h, mode)?,
                1 => vx.conv1x1[c].forward(&h, mode)?,
                _ => nn::pool::max_pool2d(&h, 3, 1, 1)?,
            };
            states.push(y);
        }
        let chosen: Vec<&Tensor> = arch.parents(VERTICES - 1).map(|j| &states[j - 1]).collect();
        Tensor::cat(&chosen, 1)
    }
}

enum Layer {
    Downsample,
    Cell(Cell),
}

/// The NAS-Bench-101 space-3 supernet.
pub struct Nb101Net {
    stem: ConvBnRelu,
    layers: Vec<Layer>,
    classifier: Linear,
}

impl Nb101Net {
    /// Builds the supernet, drawing every initial weight from `rng`.
    pub fn new(root: &Path, sc: &Nb101Space, num_classes: usize, rng: &mut Rng) -> Result<Self> {
        Self::with_copies(root, sc, num_classes, 1, rng)
    }

    /// Like [`Nb101Net::new`] with `copies` independently initialised copies of every conv op
    /// (the augmented-space `replicate` trick; the reference builds 3). Every forward call
    /// then picks, per cell and vertex, one copy with the context's RNG ([`copy_draw`]). Copy
    /// 0 keeps the op's name (`copies` = 1 is exactly `new`); copy c > 0 is `<op>_copy<c>`.
    pub fn with_copies(
        root: &Path,
        sc: &Nb101Space,
        num_classes: usize,
        copies: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if copies == 0 {
            candle_core::bail!("Nb101Net: copies must be at least 1");
        }
        debug_assert_eq!(OPS.len(), 3);
        let stem = ConvBnRelu::new(&root.pp("stem"), rng, 3, sc.channels, 3, sc)?;
        let mut layers = vec![];
        let (mut c_in, mut c_out) = (sc.channels, sc.channels);
        let mut n = 0;
        for stack in 0..sc.stacks {
            if stack > 0 {
                layers.push(Layer::Downsample);
                c_out *= 2;
            }
            for _ in 0..sc.cells_per_stack {
                let p = root.pp(format!("cells.{n}"));
                layers.push(Layer::Cell(Cell::new(&p, rng, c_in, c_out, copies, sc)?));
                c_in = c_out;
                n += 1;
            }
        }
        let w = init::xavier_uniform(rng, &[num_classes, c_out], root.device())?;
        let b = Tensor::zeros(num_classes, candle_core::DType::F32, root.device())?;
        let classifier = Linear::new(&root.pp("classifier"), w, Some(b))?;
        Ok(Self {
            stem,
            layers,
            classifier,
        })
    }
}

impl Supernet for Nb101Net {
    type Arch = Arch;

    fn forward(&self, x: &Tensor, arch: &Arch, ctx: &mut Ctx) -> Result<Output> {
        let mut h = self.stem.forward(x, ctx.mode)?;
        for l in &self.layers {
            h = match l {
                Layer::Downsample => nn::pool::max_pool2d(&h, 2, 2, 0)?,
                Layer::Cell(c) => c.forward(&h, arch, ctx)?,
            };
        }
        let logits = self.classifier.forward(&nn::pool::global_avg_pool(&h)?)?;
        Ok(Output {
            logits,
            aux_logits: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Store;
    use crate::space::nb101::Nb101;
    use crate::space::Space;
    use candle_core::Device;

    fn small() -> Nb101Space {
        Nb101Space {
            channels: 4,
            stacks: 2,
            cells_per_stack: 1,
            bn_momentum: 0.003,
            bn_eps: 1e-5,
        }
    }

    #[test]
    fn shapes_names_and_init() {
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let net = Nb101Net::new(
            &store.root(),
            &small(),
            10,
            &mut crate::rng::stream(0, "init", &[]),
        )
        .unwrap();
        let t = store.tensors();
        // Stack 2's cell goes 4 -> 8 channels: vertices of 4, projections from 4.
        assert_eq!(t["cells.1.vertex3.input.conv.weight"].dims(), &[4, 4, 1, 1]);
        assert_eq!(
            t["cells.1.vertex3.conv3x3.conv.weight"].dims(),
            &[4, 4, 3, 3]
        );
        assert_eq!(
            t["cells.0.vertex1.conv1x1.conv.weight"].dims(),
            &[2, 2, 1, 1]
        );
        assert_eq!(t["cells.0.vertex1.input.conv.weight"].dims(), &[2, 4, 1, 1]);
        assert_eq!(t["classifier.weight"].dims(), &[10, 8]);
        assert!(!t.contains_key("cells.0.vertex6.input.conv.weight"));
        // Truncated normal with std sqrt(1/fan_in): every value within 2 std.
        let w = t["cells.1.vertex2.conv3x3.conv.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bound = 2.0 * (1.0f32 / 36.0).sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.1 * bound));
        let b = t["classifier.bias"].to_vec1::<f32>().unwrap();
        assert!(b.iter().all(|&v| v == 0.0));
        let x = Tensor::ones((2, 3, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let space = Nb101::new();
        let mut r = crate::rng::stream(0, "x", &[]);
        let arch = space.sample(&mut r);
        let out = net
            .forward(&x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
            .unwrap();
        assert_eq!(out.logits.dims(), &[2, 10]);
    }
}
