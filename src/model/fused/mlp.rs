//! The pre-LN MLP block as one op: LayerNorm, fc1, activation, fc2, dropout, residual.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// A pre-LN transformer's feed-forward block with frozen parameters,
/// `x + dropout(fc2(act(fc1(LN(x)))))`. A frozen linear's backward needs none of its input, so only
/// `fc1(LN(x))` is kept (for the activation's derivative, inside the op); the composition would also
/// keep the LayerNorm's output, `act(fc1(·))` (the largest activation of a transformer layer, which
/// PyTorch does not keep), the MLP's output and its dropped copy. The LayerNorm's backward
/// recomputes its statistics from `x`, which the graph keeps anyway.
pub struct Mlp {
    pub fc1: FrozenLinear,
    pub fc2: FrozenLinear,
    pub activation: Activation,
    /// The block's LayerNorm.
    pub norm: LayerNorm,
    /// Dropout of the MLP's output (OPT's hidden dropout), when it applies.
    pub dropout: Option<std::sync::Arc<DropoutMask>>,
    /// `fc1(LN(x))` from the forward pass, for the backward pass.
    hidden: std::sync::Mutex<Option<Vec<f32>>>,
}

impl Mlp {
    pub fn new(
        (fc1, activation, fc2): (FrozenLinear, Activation, FrozenLinear),
        norm: LayerNorm,
        dropout: Option<std::sync::Arc<DropoutMask>>,
    ) -> Self {
        Mlp { fc1, fc2, activation, norm, dropout, hidden: std::sync::Mutex::new(None) }
    }
}

impl CustomOp1 for Mlp {
    fn name(&self) -> &'static str {
        "fused-frozen-mlp-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let normed = CpuStorage::F32(self.norm.rows(x, last_dim(l)?)?);
        let (hidden, hidden_shape) = Linear { w: self.fc1.0.clone(), b: self.fc1.1.clone() }
            .cpu_fwd(&normed, &Layout::contiguous(l.shape().clone()))?;
        drop(normed);
        let CpuStorage::F32(hidden) = hidden else { unreachable!("the linear returns f32") };
        let inner = *hidden_shape.dims().last().expect("rank >= 1");
        let act =
            map_rows(&hidden, inner, |h, a| a.iter_mut().zip(h).for_each(|(a, &h)| *a = self.activation.apply(h)));
        let act_layout = Layout::contiguous(hidden_shape);
        let (out, shape) =
            Linear { w: self.fc2.0.clone(), b: self.fc2.1.clone() }.cpu_fwd(&CpuStorage::F32(act), &act_layout)?;
        *self.hidden.lock().expect("mlp hidden") = Some(hidden);
        let CpuStorage::F32(out) = out else { unreachable!("the linear returns f32") };
        if shape.dims() != l.dims() {
            bail!("mlp block: output {:?} cannot be added to its input {:?}", shape.dims(), l.dims());
        }
        let mut out = match &self.dropout {
            Some(mask) => mask.apply(&out)?,
            None => out,
        };
        add_assign(&mut out, x);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let guard = self.hidden.lock().expect("mlp hidden");
        let Some(hidden) = guard.as_ref() else { bail!("fused mlp: backward before forward") };
        let (out, inner) = self.fc2.0.dims2()?;
        let (_, k) = self.fc1.0.dims2()?;
        let rows = hidden.len() / inner;
        let grad = grad.contiguous()?;
        // d act = (grad ⊙ dropout) · W2, then ⊙ act'(fc1(·)), then · W1, then LayerNorm's backward,
        // plus grad itself through the residual.
        let mut d_hidden = vec![0f32; rows * inner];
        with_data(&grad, |g| {
            let dropped;
            let g = match &self.dropout {
                Some(mask) => {
                    dropped = mask.apply(g)?;
                    &dropped[..]
                }
                None => g,
            };
            with_data(&self.fc2.0, |w2| {
                blas::sgemm((rows, inner, out), g, out, w2, inner, false, 0.0, &mut d_hidden, inner);
                Ok(())
            })
        })?;
        let chunk = inner * rows_per_task(inner);
        d_hidden.par_chunks_mut(chunk).zip(hidden.par_chunks(chunk)).for_each(|(d, h)| {
            d.iter_mut().zip(h).for_each(|(d, &h)| *d *= self.activation.derivative(h));
        });
        let mut d_normed = vec![0f32; rows * k];
        with_data(&self.fc1.0, |w1| {
            blas::sgemm((rows, k, inner), &d_hidden, inner, w1, k, false, 0.0, &mut d_normed, k);
            Ok(())
        })?;
        let x = x.contiguous()?;
        let mut dx = with_data(&x, |x| self.norm.grad_rows(x, &d_normed, k))?;
        with_data(&grad, |g| {
            add_assign(&mut dx, g);
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, masks};
    use super::*;
    use candle_core::Device;

    #[test]
    fn mlp_block_matches_layer_norm_mlp_dropout_residual() -> Result<()> {
        let dev = Device::Cpu;
        let (w1, b1) = (Tensor::randn(0f32, 0.5, (9, 6), &dev)?, Tensor::randn(0f32, 0.5, 9, &dev)?);
        let (w2, b2) = (Tensor::randn(0f32, 0.5, (6, 9), &dev)?, Tensor::randn(0f32, 0.5, 6, &dev)?);
        let (lw, lb) = (Tensor::randn(1f32, 0.3, 6, &dev)?, Tensor::randn(0f32, 0.3, 6, &dev)?);
        let (mask, mask_f) = masks(&[2, 3, 6], 1.25)?;
        for (act, dropout) in [(Activation::Gelu, false), (Activation::Relu, true), (Activation::Relu, false)] {
            let op = || {
                let mlp = ((w1.clone(), Some(b1.clone())), act, (w2.clone(), Some(b2.clone())));
                Mlp::new(mlp, LayerNorm { w: lw.clone(), b: lb.clone(), eps: 1e-5 }, dropout.then(|| mask.clone()))
            };
            let reference = |x: &Tensor| {
                let h = candle_nn::ops::layer_norm_slow(x, &lw, &lb, 1e-5)?;
                let h = h.broadcast_matmul(&w1.t()?)?.broadcast_add(&b1)?;
                let h = if act == Activation::Gelu { h.gelu_erf()? } else { h.relu()? };
                let h = h.broadcast_matmul(&w2.t()?)?.broadcast_add(&b2)?;
                x + if dropout { (h * &mask_f)? } else { h }
            };
            check(&[2, 3, 6], |x| x.apply_op1(op()), reference, 2e-5)?;
        }
        Ok(())
    }
}
