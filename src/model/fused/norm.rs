//! LayerNorm with frozen parameters (statistics accumulated in f64).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

/// `torch.nn.LayerNorm` over the last dimension with a frozen weight and bias.
pub struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
    pub eps: f32,
}

/// Mean and 1/std of one row (f64 accumulation, as precise as torch's Welford in f32 or better).
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let d = last_dim(l)?;
        let y = self.rows(x, d)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = LayerNormGrad { w: self.w.clone(), eps: self.eps };
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

impl LayerNorm {
    /// LayerNorm of each row of `x` (rows of `d`).
    pub(super) fn rows(&self, x: &[f32], d: usize) -> Result<Vec<f32>> {
        let eps = self.eps;
        with_data(&self.w, |w| {
            with_data(&self.b, |b| {
                if w.len() != d || b.len() != d {
                    bail!("layer norm: weight/bias of {} for rows of {d}", w.len());
                }
                Ok(map_rows(x, d, |x, y| {
                    let (mean, rstd) = moments(x, eps);
                    for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                        *y = (x - mean) * rstd * w + b;
                    }
                }))
            })
        })
    }

    /// The input gradient for the rows of `x` given the output gradient `g` ([`grad_rows`]).
    pub(super) fn grad_rows(&self, x: &[f32], g: &[f32], d: usize) -> Result<Vec<f32>> {
        grad_rows(x, g, d, &self.w, self.eps)
    }
}

/// LayerNorm's input gradient for the rows of `x` given the output gradient `g`:
/// `rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂))`.
fn grad_rows(x: &[f32], g: &[f32], d: usize, w: &Tensor, eps: f32) -> Result<Vec<f32>> {
    with_data(w, |w| {
        Ok(map_rows2(x, g, d, |x, g, dx| {
            let (mean, rstd) = moments(x, eps);
            let (mut sum_gw, mut sum_gw_xhat) = (0f64, 0f64);
            for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
                let gw = (g * w) as f64;
                sum_gw += gw;
                sum_gw_xhat += gw * ((x - mean) * rstd) as f64;
            }
            let (a, c) = ((sum_gw / d as f64) as f32, (sum_gw_xhat / d as f64) as f32);
            for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(g).zip(w) {
                *dx = rstd * (g * w - a - (x - mean) * rstd * c);
            }
        }))
    })
}

/// LayerNorm's input gradient from (x, grad) ([`grad_rows`]).
struct LayerNormGrad {
    w: Tensor,
    eps: f32,
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = last_dim(l1)?;
        if x.len() != g.len() {
            bail!("layer norm grad: shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let dx = grad_rows(x, g, d, &self.w, self.eps)?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_matches_the_composed_layer_norm() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = (Tensor::randn(1f32, 0.3, 16, &dev)?, Tensor::randn(0f32, 0.3, 16, &dev)?);
        let op = || LayerNorm { w: w.clone(), b: b.clone(), eps: 1e-6 };
        check(&[3, 7, 16], |x| x.apply_op1(op()), |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-6), 2e-5)
    }
}
