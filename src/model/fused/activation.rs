//! Activations: the MLP's ([`Activation`]), softmax over the last dimension, exact GELU.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::*;

/// The MLP activation between the two linears of [`Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU (ViT, Q-Former).
    Gelu,
    /// ReLU (OPT).
    Relu,
}

impl Activation {
    pub(super) fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Relu => x.max(0.0),
        }
    }

    pub(super) fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu_grad(x),
            // torch's relu backward: 0 at x = 0.
            Activation::Relu => f32::from(x > 0.0),
        }
    }
}

/// Softmax over the last dimension.
pub struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let y = map_rows(x, last_dim(l)?, |x, y| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - max).exp();
                sum += *y;
            }
            y.iter_mut().for_each(|y| *y /= sum);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

/// Softmax's input gradient from (y, grad): `y · (g − Σ g·y)`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if y.len() != g.len() {
            bail!("softmax grad: shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let dx = map_rows2(y, g, last_dim(l1)?, |y, g, dx| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = y * (g - dot);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Exact (erf) GELU, the same per-element formula as candle's `gelu_erf`.
pub struct Gelu;

fn gelu(x: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * x
}

/// d/dx GELU(x) = Φ(x) + x·φ(x).
fn gelu_grad(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1. + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
        + x * INV_SQRT_2PI * (-0.5 * x * x).exp()
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let y = map_rows(x, last_dim(l)?, |x, y| y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if x.len() != g.len() {
            bail!("gelu grad: shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let dx = map_rows2(x, g, last_dim(l1)?, |x, g, dx| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = g * gelu_grad(x);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::check;
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn softmax_matches_the_composed_softmax() -> Result<()> {
        check(&[2, 4, 9], |x| x.apply_op1(Softmax), |x| candle_nn::ops::softmax(x, D::Minus1), 1e-6)?;
        // -inf (a masked position) gives probability 0 and gradient 0.
        let x = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &Device::Cpu)?;
        let y = x.apply_op1(Softmax)?.to_vec2::<f32>()?;
        assert_eq!(y[0][1], 0.0);
        Ok(())
    }

    #[test]
    fn gelu_matches_candles_gelu_erf() -> Result<()> {
        check(&[5, 33], |x| x.apply_op1(Gelu), |x| x.gelu_erf(), 1e-5)
    }
}
