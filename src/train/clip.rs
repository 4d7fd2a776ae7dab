//! Global gradient-norm clipping (PyTorch's `clip_grad_norm_`, norm type 2).

use candle_core::{backprop::GradStore, DType, Device, Result, Storage, Tensor, Var};

/// Sum of squares of `g` in f64. On the CPU it reads the storage directly (no temporary, f64
/// accumulation); elsewhere it reduces on the device in f32 and brings back one scalar.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if matches!(g.device(), Device::Cpu) && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            match g.dtype() {
                DType::F32 => {
                    let v = &cpu.as_slice::<f32>()?[start..end];
                    return Ok(v.iter().map(|&a| f64::from(a) * f64::from(a)).sum());
                }
                DType::F64 => {
                    let v = &cpu.as_slice::<f64>()?[start..end];
                    return Ok(v.iter().map(|a| a * a).sum());
                }
                _ => {}
            }
        }
    }
    g.to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// Scales the gradients of `params` in place so their global L2 norm is at most `max_norm`
/// (factor max_norm / (norm + 1e-6) when below 1); returns the norm before clipping.
/// Parameters without a gradient are ignored, as PyTorch ignores `grad is None`. A gradient of
/// a parameter listed twice counts once. A non-finite norm scales as PyTorch 1.13 does (by 0
/// for an infinite norm, by NaN for a NaN norm), so the caller's NaN check after the step sees it.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Var], max_norm: f64) -> Result<f64> {
    let mut seen = std::collections::HashSet::new();
    let mut with_grad = Vec::with_capacity(params.len());
    let mut total_sq = 0.0;
    for p in params {
        if !seen.insert(p.as_tensor().id()) {
            continue;
        }
        if let Some(g) = grads.get(p.as_tensor()) {
            total_sq += sum_of_squares(g)?;
            with_grad.push(p);
        }
    }
    let total = total_sq.sqrt();
    let coef = max_norm / (total + 1e-6);
    // A NaN factor also scales, as torch's clamp(max=1) passes NaN through.
    if coef < 1.0 || coef.is_nan() {
        for p in with_grad {
            if let Some(g) = grads.get(p.as_tensor()) {
                // A fresh tensor rather than an in-place write: the gradient's storage may be
                // shared with other entries of the store.
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(p.as_tensor(), scaled);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::collections::HashMap<String, Tensor> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip.npz");
        Tensor::read_npz(path).unwrap().into_iter().collect()
    }

    /// Three parameters with the fixture's gradients plus one without a gradient.
    fn setup(f: &std::collections::HashMap<String, Tensor>) -> (Vec<Var>, GradStore) {
        let mut params = Vec::new();
        let mut loss: Option<Tensor> = None;
        for i in 0..3 {
            let g = &f[&format!("grad{i}")];
            let p = Var::zeros(g.shape(), DType::F32, &Device::Cpu).unwrap();
            // d/dp sum(p * g) = g, so backward reproduces the fixture's gradient exactly.
            let term = (p.as_tensor() * g).unwrap().sum_all().unwrap();
            loss = Some(match loss {
                None => term,
                Some(l) => (l + term).unwrap(),
            });
            params.push(p);
        }
        params.push(Var::zeros(7, DType::F32, &Device::Cpu).unwrap());
        let grads = loss.unwrap().backward().unwrap();
        (params, grads)
    }

    fn scalar(t: &Tensor) -> f64 {
        t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0]
    }

    #[test]
    fn matches_torch_clip_grad_norm() {
        let f = fixture();
        for case in ["clipped", "unclipped"] {
            let (params, mut grads) = setup(&f);
            let max_norm = scalar(&f[&format!("{case}.max_norm")]);
            let total = clip_grad_norm(&mut grads, &params, max_norm).unwrap();
            let want = scalar(&f[&format!("{case}.total")]);
            assert!(
                (total - want).abs() <= 1e-6 * want,
                "{case}: {total} vs {want}"
            );
            for (i, p) in params.iter().take(3).enumerate() {
                let got = grads.get(p.as_tensor()).unwrap().flatten_all().unwrap();
                let want = f[&format!("{case}.grad{i}")].flatten_all().unwrap();
                let diff = (got - &want).unwrap().abs().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-6, "{case} grad{i}: max diff {diff}");
            }
            assert!(grads.get(params[3].as_tensor()).is_none());
        }
    }

    #[test]
    fn exact_hand_values() {
        // Gradients (3, 4) and (12): norm 13; clipping to 6.5 halves them (up to the 1e-6).
        let a = Var::zeros(2, DType::F64, &Device::Cpu).unwrap();
        let b = Var::zeros(1, DType::F64, &Device::Cpu).unwrap();
        let ga = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let gb = Tensor::new(&[12.0f64], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor() * &ga).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &gb).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let params = [a.clone(), b.clone()];
        let total = clip_grad_norm(&mut grads, &params, 6.5).unwrap();
        assert_eq!(total, 13.0);
        let coef = 6.5 / (13.0 + 1e-6);
        let got = grads.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(got, vec![3.0 * coef, 4.0 * coef]);
        // Already within the bound: nothing changes, the same norm is reported.
        let total = clip_grad_norm(&mut grads, &params, 100.0).unwrap();
        assert!((total - 13.0 * coef).abs() < 1e-12);
        let got = grads.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(got, vec![12.0 * coef]);
    }

    #[test]
    fn non_finite_norm_poisons_like_torch() {
        // torch 1.13: an infinite norm gives factor 0 (finite entries become 0, inf becomes
        // NaN); either way the caller's NaN check after the step fires.
        let a = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let ga = Tensor::new(&[f32::INFINITY, 1.0], &Device::Cpu).unwrap();
        let mut grads = (a.as_tensor() * &ga)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let total = clip_grad_norm(&mut grads, std::slice::from_ref(&a), 5.0).unwrap();
        assert!(total.is_infinite());
        let got = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(got[0].is_nan() && got[1] == 0.0, "{got:?}");
    }
}
