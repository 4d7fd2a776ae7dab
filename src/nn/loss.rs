//! Losses and accuracy counts.

use candle_core::{bail, DType, Result, Tensor, D};

/// Mean cross-entropy of `logits` (N, K) against integer `targets` (N,) (u32).
/// `smoothing` > 0 puts `smoothing / (K - 1)` on every wrong class and `1 - smoothing` on the
/// right one (the study's ProxylessNAS label smoothing, not PyTorch's `eps / K`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (n, k) = check_shapes(logits, targets, "cross_entropy")?;
    if n == 0 {
        bail!("cross_entropy: empty batch");
    }
    if !(0.0..1.0).contains(&smoothing) {
        bail!("cross_entropy: label smoothing {smoothing} is outside [0, 1)");
    }
    if smoothing > 0.0 && k < 2 {
        bail!("cross_entropy: label smoothing needs at least 2 classes, got {k}");
    }
    let max_target = targets.max(0)?.to_scalar::<u32>()? as usize;
    if max_target >= k {
        bail!("cross_entropy: target {max_target} is out of range for {k} classes");
    }
    let log_p = log_softmax(logits)?;
    let targets = targets.to_device(logits.device())?;
    let picked = if smoothing == 0.0 {
        log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?
    } else {
        // Target distribution: off + (on - off) * one_hot, built on the logits' device.
        let off = smoothing / (k as f64 - 1.0);
        let on = 1.0 - smoothing;
        let classes = Tensor::arange(0u32, k as u32, logits.device())?.unsqueeze(0)?;
        let one_hot = targets
            .unsqueeze(1)?
            .broadcast_eq(&classes)?
            .to_dtype(logits.dtype())?;
        let dist = ((one_hot * (on - off))? + off)?.detach();
        log_p.mul(&dist)?.sum(1)?
    };
    picked.mean(0)?.neg()
}

/// Log-softmax over the last axis with the row maximum subtracted (as a constant, so that
/// the gradient is exact and ties in the maximum do not matter).
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

fn check_shapes(logits: &Tensor, targets: &Tensor, what: &str) -> Result<(usize, usize)> {
    let (n, k) = match logits.dims() {
        [n, k] => (*n, *k),
        d => bail!("{what}: logits must be (N, K), got shape {d:?}"),
    };
    if targets.dims() != [n] {
        bail!(
            "{what}: targets must be ({n},), got shape {:?}",
            targets.dims()
        );
    }
    if targets.dtype() != DType::U32 {
        bail!("{what}: targets must be u32, got {:?}", targets.dtype());
    }
    if k == 0 {
        bail!("{what}: logits have no classes");
    }
    Ok((n, k))
}

/// Number of rows whose arg-max equals the target, and the number of rows whose target is
/// among the `k` largest logits. Ties rank the lower class index first (so top-1 is the first
/// arg-max); `k` larger than the number of classes counts every row.
pub fn correct_topk(logits: &Tensor, targets: &Tensor, k: usize) -> Result<(usize, usize)> {
    let (_, classes) = check_shapes(logits, targets, "correct_topk")?;
    if k == 0 {
        bail!("correct_topk: k must be at least 1");
    }
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let targets = targets.to_vec1::<u32>()?;
    let (mut top1, mut topk) = (0, 0);
    for (i, (row, &t)) in rows.iter().zip(&targets).enumerate() {
        let t = t as usize;
        let Some(&lt) = row.get(t) else {
            bail!("correct_topk: target {t} of row {i} is out of range for {classes} classes");
        };
        // The target's rank: classes strictly better, or equal and earlier.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > lt || (v == lt && j < t))
            .count();
        top1 += (rank == 0) as usize;
        topk += (rank < k) as usize;
    }
    Ok((top1, topk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    fn fixture() -> Result<HashMap<String, Tensor>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/loss.npz");
        Ok(Tensor::read_npz(path)?.into_iter().collect())
    }

    fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
        f.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
    }

    #[test]
    fn cross_entropy_matches_torch_with_and_without_smoothing() -> Result<()> {
        let f = fixture()?;
        let targets = get(&f, "targets").to_dtype(DType::U32)?;
        for (tag, eps) in [("s0", 0.0), ("s01", 0.1)] {
            let v = Var::from_tensor(get(&f, "logits"))?;
            let loss = cross_entropy(v.as_tensor(), &targets, eps)?;
            let expect = get(&f, &format!("loss_{tag}")).to_vec1::<f32>()?[0];
            let got = loss.to_scalar::<f32>()?;
            assert!(
                (got - expect).abs() <= 1e-5 * expect.abs(),
                "{tag}: {got} vs {expect}"
            );
            let grads = loss.backward()?;
            let d = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{tag}: no gradient"));
            let expect = get(&f, &format!("dlogits_{tag}"));
            let err = d
                .sub(expect)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(err < 1e-6, "{tag}: gradient error {err}");
        }
        Ok(())
    }

    #[test]
    fn smoothing_uses_eps_over_k_minus_one() -> Result<()> {
        // Equal logits: log p = -ln K for every class, whatever the target distribution.
        let logits = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[1u32, 3], &Device::Cpu)?;
        let l = cross_entropy(&logits, &t, 0.3)?.to_scalar::<f32>()?;
        assert!((l - 4f32.ln()).abs() < 1e-6);
        // Logits (0, a): the loss is -(1 - eps) log p_t - eps log p_other.
        let a = 2.0f32;
        let logits = Tensor::new(&[[0.0f32, a]], &Device::Cpu)?;
        let t = Tensor::new(&[1u32], &Device::Cpu)?;
        let lse = (1.0 + a.exp()).ln();
        let expect = -(0.9 * (a - lse) + 0.1 * (0.0 - lse));
        let l = cross_entropy(&logits, &t, 0.1)?.to_scalar::<f32>()?;
        assert!((l - expect).abs() < 1e-6, "{l} vs {expect}");
        Ok(())
    }

    #[test]
    fn rejects_bad_targets() -> Result<()> {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        assert!(cross_entropy(&logits, &Tensor::new(&[0u32, 3], &Device::Cpu)?, 0.0).is_err());
        assert!(cross_entropy(&logits, &Tensor::new(&[0i64, 1], &Device::Cpu)?, 0.0).is_err());
        assert!(cross_entropy(&logits, &Tensor::new(&[0u32], &Device::Cpu)?, 0.0).is_err());
        assert!(correct_topk(&logits, &Tensor::new(&[0u32, 5], &Device::Cpu)?, 1).is_err());
        Ok(())
    }

    #[test]
    fn topk_counts_match_torch_and_break_ties_by_index() -> Result<()> {
        let f = fixture()?;
        let targets = get(&f, "targets").to_dtype(DType::U32)?;
        let (c1, c5) = correct_topk(get(&f, "logits"), &targets, 5)?;
        let expect = get(&f, "topk_1_5").to_dtype(DType::U32)?.to_vec1::<u32>()?;
        assert_eq!(vec![c1 as u32, c5 as u32], expect);
        let logits = Tensor::new(&[[1f32, 3., 3., 0.], [2., 2., 2., 2.]], &Device::Cpu)?;
        let t = Tensor::new(&[2u32, 0], &Device::Cpu)?;
        assert_eq!(correct_topk(&logits, &t, 1)?, (1, 1));
        assert_eq!(correct_topk(&logits, &t, 2)?, (1, 2));
        let t = Tensor::new(&[1u32, 3], &Device::Cpu)?;
        assert_eq!(correct_topk(&logits, &t, 3)?, (1, 1));
        assert_eq!(correct_topk(&logits, &t, 9)?, (1, 2));
        Ok(())
    }
}
