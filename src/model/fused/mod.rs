//! Fused CPU f32 kernels with an explicit backward: the frozen linear (alone, with a LoRA branch,
//! with its residual), the pre-LN MLP block (LayerNorm, MLP, dropout, residual), multi-head
//! attention ([`attention`]), LayerNorm with frozen parameters, softmax, exact GELU and dropout.
//!
//! candle's autograd computes a gradient for *every* operand of a binary op, trainable or not, and
//! keeps it until `backward` returns: the broadcast LayerNorm weight and bias, each linear's bias,
//! each dropout mask all get full-size gradients nobody reads. Its composed LayerNorm, softmax and
//! GELU backward also take 5–10 passes (and allocations) over each activation. And every node keeps
//! its inputs alive until `backward` returns, where PyTorch saves only what each backward needs: a
//! residual add keeps both its operands, a head split keeps the tensor it copied. These ops take one
//! pass forward and one backward, give a gradient to trainable inputs only, and keep only what
//! their backward needs (dropout masks as bytes). [`super::ops`] picks them on CPU for f32 with
//! frozen parameters; trainable parameters (the synthetic base's full training) and other devices
//! keep candle's composed ops, which the unit tests check these against.
//!
//! One file per op family: [`linear`] (frozen linear, with LoRA, with residual; `grad @ w`), [`mlp`]
//! (the pre-LN MLP block), [`attention`], [`norm`] (LayerNorm), [`activation`] (softmax, GELU, the
//! MLP's activations), [`dropout`] (masks and applying them). This file holds the CPU helpers they
//! share.

use candle_core::{bail, CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

use super::blas;

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod linear;
pub mod mlp;
pub mod norm;
pub use activation::{Activation, Gelu, Softmax};
pub use attention::{check_causal, visible_keys, Attention, Core as AttentionCore, QkvAttention};
pub use dropout::{DropoutMask, Mask};
pub use linear::{input_grad, FrozenLinear, GradToInputOnly, Linear, LoraLinear, ResidualLinear};
pub use mlp::Mlp;
pub use norm::LayerNorm;

/// Rows per parallel task: enough work per task to amortise the scheduling.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("fused kernels take f32, got {:?}", candle_core::backend::BackendStorage::dtype(s))
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => bail!("fused kernels take contiguous tensors"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(s, layout)?),
        _ => bail!("fused kernels run on CPU tensors"),
    }
}

fn rows_per_task(row_len: usize) -> usize {
    MIN_ELEMS_PER_TASK.div_ceil(row_len.max(1)).max(1)
}

/// `out[r] = f(a[r], b[r])` row by row in parallel, for two inputs of the same shape.
fn map_rows2(a: &[f32], b: &[f32], d: usize, f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let rows = rows_per_task(d);
    out.par_chunks_mut(d * rows).zip(a.par_chunks(d * rows)).zip(b.par_chunks(d * rows)).for_each(|((o, a), b)| {
        for ((o, a), b) in o.chunks_mut(d).zip(a.chunks(d)).zip(b.chunks(d)) {
            f(a, b, o)
        }
    });
    out
}

fn map_rows(a: &[f32], d: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let rows = rows_per_task(d);
    out.par_chunks_mut(d * rows).zip(a.par_chunks(d * rows)).for_each(|(o, a)| {
        for (o, a) in o.chunks_mut(d).zip(a.chunks(d)) {
            f(a, o)
        }
    });
    out
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused kernels take tensors with a non-empty last dimension"),
    }
}

/// `y += x`, in parallel.
fn add_assign(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(MIN_ELEMS_PER_TASK)
        .zip(x.par_chunks(MIN_ELEMS_PER_TASK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

#[cfg(test)]
mod tests {
    //! Helpers of the op families' tests: each fused op against candle's composed ops.
    use super::*;
    use candle_core::{Device, Var};

    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Compares `fused(x)` with `reference(x)` and the gradients of `sum(out · r)` for a random `r`.
    pub(super) fn check(
        shape: &[usize],
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
        tol: f32,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., shape, &dev)?)?;
        let (yf, yr) = (fused(x.as_tensor())?, reference(x.as_tensor())?);
        assert_eq!(yf.dims(), yr.dims());
        assert!(max_diff(&yf, &yr) <= tol, "forward differs by {}", max_diff(&yf, &yr));
        let r = Tensor::randn(0f32, 1., yr.shape(), &dev)?;
        let gf = (yf * &r)?.sum_all()?.backward()?;
        let gr = (yr * &r)?.sum_all()?.backward()?;
        let (gf, gr) = (gf.get(x.as_tensor()).expect("fused grad"), gr.get(x.as_tensor()).expect("reference grad"));
        let scale = gr.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
        assert!(max_diff(gf, gr) <= tol * scale, "gradient differs by {}", max_diff(gf, gr));
        Ok(())
    }

    /// A byte mask over `n` elements and the same mask as floats (0 or `scale`) of `shape`.
    pub(super) fn masks(shape: &[usize], scale: f32) -> Result<(std::sync::Arc<DropoutMask>, Tensor)> {
        let n = shape.iter().product();
        let keep: Vec<u8> = (0..n).map(|i| u8::from(i % 4 != 1)).collect();
        let floats = Tensor::from_vec(keep.iter().map(|&k| f32::from(k) * scale).collect(), shape, &Device::Cpu)?;
        Ok((std::sync::Arc::new(DropoutMask { keep, scale }), floats))
    }
}
