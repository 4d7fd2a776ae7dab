//! The DARTS-PTB language model: word embedding (with word dropout), a locked dropout, the
//! searched recurrent cell, a locked dropout, and a decoder tied to the embedding.
//!
//! Per time step, with masks `xm` (input) and `hm` (hidden) fixed for the whole sequence:
//! `[c, h] = [x * xm, h_prev * hm] @ W0`, `s0 = h_prev + sigmoid(c) * (tanh(h) - h_prev)`; step i
//! reads `p = state[switch_i]`, `[c, h] = (p * hm) @ W_i`, `s = p + sigmoid(c) * (act_i(h) - p)`;
//! the new hidden state is the mean of states 1..8. Every step matrix runs for every
//! architecture (only the activation and the input state vary), so every parameter gets a
//! gradient at every step. Tensor names follow the study's `state_dict` (`encoder.weight`,
//! `rnn._W0`, `rnn._Ws.<i>`, `decoder.bias`; `decoder.weight` is `encoder.weight`).

use super::ptb::{Act, Arch, STEPS};
use crate::config::PtbSpace;
use crate::nn::{self, init, Path};
use crate::rng::Rng;
use candle_core::{bail, DType, Device, Result, Tensor, Var, D};

/// Dropout probabilities of the model (the study's `dropout*` arguments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropouts {
    /// Locked dropout on the RNN output (`dropout`, 0.75).
    pub output: f64,
    /// Variational dropout of the hidden state (`dropout_rnn_h`, 0.25).
    pub h: f64,
    /// Variational dropout of the cell input (`dropout_rnn_x`, 0.75).
    pub x: f64,
    /// Locked dropout on the embedding output (`dropout_inp`, 0.2).
    pub input: f64,
    /// Word dropout: whole embedding rows (`dropout_emb`, 0.1).
    pub embedding: f64,
}

impl From<&PtbSpace> for Dropouts {
    fn from(s: &PtbSpace) -> Self {
        Self {
            output: s.dropout,
            h: s.dropout_rnn_h,
            x: s.dropout_rnn_x,
            input: s.dropout_inp,
            embedding: s.dropout_emb,
        }
    }
}

/// The dropout masks of one training forward pass (each holds 0 or 1 / keep); `None` means no
/// dropout (evaluation). Shapes: `embedding` (V,), `input` and `x` (N, E), `h` and `output`
/// (N, H); locked masks are shared by every time step of the sequence.
#[derive(Clone, Debug, Default)]
pub struct Masks {
    pub embedding: Option<Tensor>,
    pub input: Option<Tensor>,
    pub x: Option<Tensor>,
    pub h: Option<Tensor>,
    pub output: Option<Tensor>,
}

impl Masks {
    /// No dropout.
    pub fn none() -> Self {
        Self::default()
    }

    /// Draws every mask of a training pass with batch `n`, in a fixed order (word rows,
    /// embedding output, cell input, hidden, RNN output), from `rng`.
    pub fn draw(
        rng: &mut Rng,
        p: &Dropouts,
        vocab: usize,
        n: usize,
        emb: usize,
        hidden: usize,
        device: &Device,
    ) -> Result<Self> {
        let some = |t: Result<Tensor>| t.map(Some);
        Ok(Self {
            embedding: some(nn::dropout::mask(rng, &[vocab], p.embedding, device))?,
            input: some(nn::dropout::mask(rng, &[n, emb], p.input, device))?,
            x: some(nn::dropout::mask(rng, &[n, emb], p.x, device))?,
            h: some(nn::dropout::mask(rng, &[n, hidden], p.h, device))?,
            output: some(nn::dropout::mask(rng, &[n, hidden], p.output, device))?,
        })
    }
}

/// A forward pass's result.
pub struct LmOutput {
    /// (L * N, V), rows in time-major order (row t * N + n).
    pub logits: Tensor,
    /// The last hidden state (N, H).
    pub hidden: Tensor,
    /// Hidden states of every time step before the output dropout (L, N, H).
    pub rnn_h: Tensor,
    /// After the output dropout (L, N, H).
    pub dropped: Tensor,
}

/// The loss of a training pass: the total (cross-entropy + AR + TAR) to differentiate, and
/// the plain cross-entropy the study logs as `loss`.
pub struct LmLoss {
    pub total: Tensor,
    pub cross_entropy: Tensor,
}

/// The supernet: embedding (tied decoder), the cell's W0 and 8 step matrices, decoder bias.
pub struct PtbNet {
    pub encoder: Var,
    pub decoder_bias: Var,
    pub w0: Var,
    pub ws: Vec<Var>,
    pub vocab: usize,
    pub hidden: usize,
    pub dropouts: Dropouts,
}

/// The weights a pass reads: the Vars themselves (training) or detached views (evaluation,
/// so that no backward graph is kept across batches).
struct Weights {
    enc: Tensor,
    bias: Tensor,
    w0: Tensor,
    ws: Vec<Tensor>,
}

impl PtbNet {
    /// A fresh model. Initialised as the study: W0 and the step matrices, then the embedding,
    /// uniform in +-`init_range`; decoder bias 0.
    pub fn new(path: &Path, cfg: &PtbSpace, vocab: usize, rng: &mut Rng) -> Result<Self> {
        if cfg.embedding != cfg.hidden {
            bail!(
                "ptb: embedding ({}) must equal hidden ({}): the decoder is tied to the embedding",
                cfg.embedding,
                cfg.hidden
            );
        }
        if vocab == 0 {
            bail!("ptb: empty vocabulary");
        }
        let h = cfg.hidden;
        let r = cfg.init_range;
        let dev = path.device().clone();
        let rnn = path.pp("rnn");
        let w0 = rnn.param("_W0", init::uniform(rng, &[2 * h, 2 * h], -r, r, &dev)?)?;
        let mut ws = Vec::with_capacity(STEPS);
        for i in 0..STEPS {
            let w = init::uniform(rng, &[h, 2 * h], -r, r, &dev)?;
            ws.push(rnn.pp("_Ws").param(&i.to_string(), w)?);
        }
        let encoder = path
            .pp("encoder")
            .param("weight", init::uniform(rng, &[vocab, h], -r, r, &dev)?)?;
        let decoder_bias = path
            .pp("decoder")
            .param("bias", Tensor::zeros(vocab, DType::F32, &dev)?)?;
        Ok(Self {
            encoder,
            decoder_bias,
            w0,
            ws,
            vocab,
            hidden: h,
            dropouts: Dropouts::from(cfg),
        })
    }

    /// A zero hidden state for batch `n`.
    pub fn zero_hidden(&self, n: usize) -> Result<Tensor> {
        Tensor::zeros(
            (n, self.hidden),
            self.encoder.dtype(),
            self.encoder.device(),
        )
    }

    fn weights(&self, track: bool) -> Weights {
        let t = |v: &Var| {
            if track {
                v.as_tensor().clone()
            } else {
                v.as_tensor().detach()
            }
        };
        Weights {
            enc: t(&self.encoder),
            bias: t(&self.decoder_bias),
            w0: t(&self.w0),
            ws: self.ws.iter().map(t).collect(),
        }
    }

    /// Runs `tokens` (L, N) (u32) from `hidden` (N, H) through `arch`. `track`: build the
    /// backward graph (training); without it the weights are detached (evaluation). Masks
    /// that are `None` apply no dropout.
    pub fn forward(
        &self,
        tokens: &Tensor,
        hidden: &Tensor,
        arch: &Arch,
        masks: &Masks,
        track: bool,
    ) -> Result<LmOutput> {
        let (l, n) = tokens.dims2()?;
        let h = self.hidden;
        if l == 0 || n == 0 {
            bail!("ptb forward: empty batch ({l} x {n})");
        }
        if hidden.dims() != [n, h] {
            bail!(
                "ptb forward: hidden state {:?}, expected [{n}, {h}]",
                hidden.dims()
            );
        }
        let w = self.weights(track);
        // Embedding with word dropout: masking the looked-up rows equals looking up the
        // masked matrix (the study's EmbeddingDropout) and touches only L * N rows.
        let idx = tokens.flatten_all()?;
        let mut emb = w.enc.index_select(&idx, 0)?;
        if let Some(m) = &masks.embedding {
            emb = emb.broadcast_mul(&m.index_select(&idx, 0)?.unsqueeze(1)?)?;
        }
        let mut emb = emb.reshape((l, n, h))?;
        if let Some(m) = &masks.input {
            emb = emb.broadcast_mul(&m.unsqueeze(0)?)?;
        }
        // The input half of [x, h] @ W0 for all time steps in one product.
        let w0x = w.w0.narrow(0, 0, h)?;
        let w0h = w.w0.narrow(0, h, h)?;
        let xin = match &masks.x {
            Some(m) => emb.broadcast_mul(&m.unsqueeze(0)?)?,
            None => emb,
        };
        let xproj = xin
            .reshape((l * n, h))?
            .matmul(&w0x)?
            .reshape((l, n, 2 * h))?;
        let mask_h = |t: &Tensor| -> Result<Tensor> {
            match &masks.h {
                Some(m) => t.mul(m),
                None => Ok(t.clone()),
            }
        };
        let mut h_prev = hidden.clone();
        let mut outs = Vec::with_capacity(l);
        for t in 0..l {
            let pre = xproj.get(t)?.add(&mask_h(&h_prev)?.matmul(&w0h)?)?;
            let c0 = candle_nn::ops::sigmoid(&pre.narrow(1, 0, h)?)?;
            let h0 = pre.narrow(1, h, h)?.tanh()?;
            let s0 = h_prev.add(&c0.mul(&h0.sub(&h_prev)?)?)?;
            let mut states = Vec::with_capacity(STEPS + 1);
            states.push(s0);
            for (i, step) in arch.steps().iter().enumerate() {
                let p = &states[step.switch()];
                let ch = mask_h(p)?.matmul(&w.ws[i])?;
                let c = candle_nn::ops::sigmoid(&ch.narrow(1, 0, h)?)?;
                let a = activation(step.act, &ch.narrow(1, h, h)?)?;
                let s = p.add(&c.mul(&a.sub(p)?)?)?;
                states.push(s);
            }
            let out = Tensor::stack(&states[1..], 2)?.mean(2)?;
            h_prev = out.clone();
            outs.push(out);
        }
        let rnn_h = Tensor::stack(&outs, 0)?;
        let dropped = match &masks.output {
            Some(m) => rnn_h.broadcast_mul(&m.unsqueeze(0)?)?,
            None => rnn_h.clone(),
        };
        let logits = dropped
            .reshape((l * n, h))?
            .matmul(&w.enc.t()?)?
            .broadcast_add(&w.bias)?;
        Ok(LmOutput {
            logits,
            hidden: h_prev,
            rnn_h,
            dropped,
        })
    }
}

/// A step's activation (ReLU with PyTorch's zero gradient at 0).
fn activation(act: Act, x: &Tensor) -> Result<Tensor> {
    match act {
        Act::Tanh => x.tanh(),
        Act::Relu => nn::activation::relu(x),
        Act::Sigmoid => candle_nn::ops::sigmoid(x),
        Act::Identity => Ok(x.clone()),
    }
}

/// The study's training criterion on targets (L, N) (u32): mean cross-entropy, plus
/// `alpha * mean(dropped^2)` when alpha > 0 (activation regularisation) and
/// `beta * mean((h_t - h_{t-1})^2)` when beta > 0 and L > 1 (temporal regularisation).
pub fn loss(out: &LmOutput, targets: &Tensor, alpha: f64, beta: f64) -> Result<LmLoss> {
    let ce = nn::loss::cross_entropy(&out.logits, &targets.flatten_all()?, 0.0)?;
    let mut total = ce.clone();
    if alpha > 0.0 {
        total = total.add(&(out.dropped.sqr()?.mean_all()? * alpha)?)?;
    }
    let l = out.rnn_h.dim(0)?;
    if beta > 0.0 && l > 1 {
        let d = out
            .rnn_h
            .narrow(0, 1, l - 1)?
            .sub(&out.rnn_h.narrow(0, 0, l - 1)?)?;
        total = total.add(&(d.sqr()?.mean_all()? * beta)?)?;
    }
    Ok(LmLoss {
        total,
        cross_entropy: ce,
    })
}

/// Rows of `logits` (M, V) whose arg-max equals `targets` (M,) (u32).
pub fn correct(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    let hits = pred.eq(&targets.flatten_all()?)?;
    Ok(hits.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Store;
    use crate::space::ptb::{Ptb, STEPS};
    use crate::space::Space;

    fn cfg(h: usize) -> PtbSpace {
        match crate::config::defaults::ptb().space {
            crate::config::Space::Ptb(mut s) => {
                s.embedding = h;
                s.hidden = h;
                s
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_step_matrix_gets_a_gradient_for_any_arch_and_eval_keeps_no_graph() {
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let mut r = crate::rng::stream(0, "init", &[]);
        let net = PtbNet::new(&store.root(), &cfg(6), 11, &mut r).unwrap();
        let names: Vec<String> = store.params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 3 + STEPS);
        assert!(names.contains(&"rnn._W0".to_string()) && names.contains(&"rnn._Ws.7".into()));
        let tokens = Tensor::new(&[[1u32, 2], [3, 4], [5, 6]], &dev).unwrap();
        let targets = Tensor::new(&[[2u32, 3], [4, 5], [6, 7]], &dev).unwrap();
        let mut sr = crate::rng::stream(0, "sample", &[]);
        for _ in 0..5 {
            let arch = Ptb.sample(&mut sr);
            let masks = Masks::draw(&mut r, &net.dropouts, 11, 2, 6, 6, &dev).unwrap();
            let out = net
                .forward(&tokens, &net.zero_hidden(2).unwrap(), &arch, &masks, true)
                .unwrap();
            assert_eq!(out.logits.dims(), &[6, 11]);
            assert_eq!(out.rnn_h.dims(), &[3, 2, 6]);
            let l = loss(&out, &targets, 0.5, 1e-3).unwrap();
            let grads = l.total.backward().unwrap();
            for (name, v) in store.params() {
                assert!(grads.get(v.as_tensor()).is_some(), "{name} has no gradient");
            }
        }
        let arch = Ptb.sample(&mut sr);
        let out = net
            .forward(
                &tokens,
                &net.zero_hidden(2).unwrap(),
                &arch,
                &Masks::none(),
                false,
            )
            .unwrap();
        let ce = loss(&out, &targets, 0.0, 0.0).unwrap().cross_entropy;
        let grads = ce.backward().unwrap();
        for (name, v) in store.params() {
            assert!(
                grads.get(v.as_tensor()).is_none(),
                "{name}: eval built a graph"
            );
        }
    }
}
