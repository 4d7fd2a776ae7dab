//! Activations with PyTorch's gradients (candle's ReLU passes gradient 1 at exactly 0, and its
//! clamp splits the gradient at the bounds).

use super::host::{cpu_tensor, f32_data, is_cpu_f32, par_map, par_zip, with_f32};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// ReLU whose gradient at 0 is 0, like PyTorch.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.apply_op1(Clip { hi: None })
    } else {
        relu_fallback(x)
    }
}

/// ReLU6 (min(max(x, 0), 6)) with PyTorch's gradient (0 at 0 and at 6).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        x.apply_op1(Clip { hi: Some(6.0) })
    } else {
        relu6_fallback(x)
    }
}

/// ReLU from candle's differentiable ops for devices without the custom op: the input times
/// a constant mask, so that the gradient is the mask (0 at exactly 0).
pub fn relu_fallback(x: &Tensor) -> Result<Tensor> {
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?.detach();
    x.mul(&mask)
}

/// ReLU6 from candle's ops: `x * [0 < x < 6] + 6 * [x >= 6]` with both masks constant, so the
/// gradient is 1 strictly inside (0, 6) and 0 elsewhere, like PyTorch's hardtanh backward.
pub fn relu6_fallback(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    let above = x.ge(6.0)?.to_dtype(dt)?.detach();
    let inside = x
        .gt(0.0)?
        .to_dtype(dt)?
        .mul(&x.lt(6.0)?.to_dtype(dt)?)?
        .detach();
    x.mul(&inside)?.add(&(above * 6.0)?)
}

/// Clips to `[0, hi]` (`hi = None`: ReLU). The gradient passes where the input lies strictly
/// inside the interval; NaN propagates like PyTorch's.
struct Clip {
    hi: Option<f32>,
}

impl Clip {
    /// `[0, hi]` clipping written as compares and selects with the bound hoisted, so that the
    /// loops vectorise. NaN fails every comparison and passes through, as in PyTorch.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        match self.hi {
            None => par_map(x, |v| if v <= 0.0 { 0.0 } else { v }),
            Some(hi) => par_map(x, move |v| {
                if v <= 0.0 {
                    0.0
                } else if v >= hi {
                    hi
                } else {
                    v
                }
            }),
        }
    }

    /// The gradient passes strictly inside `(0, hi)` (and for NaN inputs).
    fn backward(&self, x: &[f32], g: &[f32]) -> Vec<f32> {
        match self.hi {
            None => par_zip(x, g, |v, gv| if v <= 0.0 { 0.0 } else { gv }),
            Some(hi) => par_zip(
                x,
                g,
                move |v, gv| if v <= 0.0 || v >= hi { 0.0 } else { gv },
            ),
        }
    }
}

impl CustomOp1 for Clip {
    fn name(&self) -> &'static str {
        "runner-clip"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l)?;
        let y = self.forward(&x);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if grad.dtype() != DType::F32 || arg.dims() != grad.dims() {
            bail!(
                "{}: gradient {:?} does not match input {:?}",
                self.name(),
                grad.shape(),
                arg.shape()
            );
        }
        let dx = with_f32(arg, |x| with_f32(grad, |g| Ok(self.backward(x, g))))?;
        cpu_tensor(dx, arg.dims()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    fn fixture() -> Result<HashMap<String, Tensor>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/activation.npz");
        Ok(Tensor::read_npz(path)?.into_iter().collect())
    }

    fn get<'a>(f: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
        f.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
    }

    fn close(a: &Tensor, b: &Tensor) -> Result<f32> {
        a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    type Act = fn(&Tensor) -> Result<Tensor>;

    /// Forward value and input gradient of sum(f(x) * g).
    fn run(f: Act, x: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let v = Var::from_tensor(x)?;
        let y = f(v.as_tensor())?;
        let grads = y.mul(g)?.sum_all()?.backward()?;
        let dx = grads
            .get(v.as_tensor())
            .cloned()
            .unwrap_or(v.as_tensor().zeros_like()?);
        Ok((y, dx))
    }

    #[test]
    fn relu_and_relu6_match_torch_including_zero_and_six() -> Result<()> {
        let f = fixture()?;
        let (x, g) = (get(&f, "x"), get(&f, "g"));
        let xs = x.to_vec1::<f32>()?;
        assert!(xs.contains(&0.0) && xs.contains(&6.0));
        let cases: [(&str, Act); 4] = [
            ("relu", relu),
            ("relu", relu_fallback),
            ("relu6", relu6),
            ("relu6", relu6_fallback),
        ];
        for (name, op) in cases {
            let (y, dx) = run(op, x, g)?;
            assert_eq!(
                close(&y, get(&f, &format!("{name}_y")))?,
                0.0,
                "{name} forward"
            );
            assert_eq!(
                close(&dx, get(&f, &format!("{name}_dx")))?,
                0.0,
                "{name} gradient"
            );
        }
        Ok(())
    }

    #[test]
    fn custom_op_reads_strided_input() -> Result<()> {
        let x = Tensor::arange(-6f32, 6., &Device::Cpu)?
            .reshape((3, 4))?
            .t()?;
        assert!(!x.is_contiguous());
        let ours = relu6(&x)?.to_vec2::<f32>()?;
        let expect = relu6_fallback(&x)?.to_vec2::<f32>()?;
        assert_eq!(ours, expect);
        let (_, dx) = run(relu6, &x, &x.ones_like()?)?;
        let dx = dx.to_vec2::<f32>()?;
        assert_eq!(dx[1], vec![0.0, 0.0, 1.0]); // inputs -5, -1, 3 after the transpose
        assert_eq!(dx[2], vec![0.0, 0.0, 1.0]); // -4, 0 (exactly), 4
        assert_eq!(dx[3], vec![0.0, 1.0, 1.0]); // -3, 1, 5
        Ok(())
    }
}
