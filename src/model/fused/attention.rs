//! Multi-head self-attention on a fused `qkv` projection (the ViT's), as one op with its backward.
//!
//! The composition (`reshape` → `permute` → three contiguous copies of q, k, v → `q kᵀ` → `· scale`
//! → softmax → `· v` → `permute` → a contiguous copy) leaves candle's graph holding every one of
//! those tensors until `backward`: at blip2-opt-2.7b's ViT shapes (257 tokens, 16 heads of 88) and
//! batch 2 that is ≈ 37 MB per layer, where the backward needs only the attention probabilities
//! (8.5 MB) and the `qkv` output the graph keeps anyway. This op reads q, k and v in place from
//! `qkv` with strided products, keeps the probabilities only, and writes the context already in
//! `[b, t, heads · head_dim]` order. The heads run in parallel, each product on one thread.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_data};
use crate::model::blas::{sgemm_serial, Operand};

/// `softmax(scale · q kᵀ) v` per head, the heads concatenated, for `qkv` [b, t, 3·d] laid out as HF's
/// `reshape(b, t, 3, heads, d / heads)`; output [b, t, d]. Backward gives `qkv` its gradient.
pub struct QkvAttention {
    heads: usize,
    scale: f32,
    /// The attention probabilities [b, heads, t, t] from the forward pass, for the backward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

impl QkvAttention {
    pub fn new(heads: usize, scale: f32) -> Self {
        QkvAttention { heads, scale, probs: Mutex::new(None) }
    }

    /// (batch, tokens, model width, head width) of a `qkv` input.
    fn dims(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let &[b, t, d3] = dims else { bail!("qkv attention takes [b, t, 3·d], got {dims:?}") };
        if d3 % 3 != 0 || (d3 / 3) % self.heads != 0 || t == 0 {
            bail!("qkv attention: {dims:?} does not split into 3 × {} heads", self.heads);
        }
        Ok((b, t, d3 / 3, d3 / 3 / self.heads))
    }
}

/// The start of q, k and v of head `h` of sequence `b` within `qkv` (row stride 3·d).
fn head_offsets(b: usize, h: usize, (t, d, hd): (usize, usize, usize)) -> [usize; 3] {
    let base = b * t * 3 * d + h * hd;
    [base, base + d, base + 2 * d]
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "fused-qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l)?;
        let (b, t, d, hd) = self.dims(l.dims())?;
        let h = self.heads;
        let mut probs = vec![0f32; b * h * t * t];
        // Per head [t, hd], then interleaved into [b, t, h · hd].
        let mut heads_ctx = vec![0f32; b * h * t * hd];
        probs.par_chunks_mut(t * t).zip(heads_ctx.par_chunks_mut(t * hd)).enumerate().for_each(|(i, (p, c))| {
            let [q, k, v] = head_offsets(i / h, i % h, (t, d, hd)).map(|o| &qkv[o..]);
            sgemm_serial((t, t, hd), Operand::new(q, 3 * d), Operand::t(k, 3 * d), 0.0, p, t);
            for row in p.chunks_mut(t) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = ((*x - max) * self.scale).exp();
                    sum += *x;
                }
                row.iter_mut().for_each(|x| *x /= sum);
            }
            sgemm_serial((t, hd, t), Operand::new(p, t), Operand::new(v, 3 * d), 0.0, c, hd);
        });
        let mut ctx = vec![0f32; b * t * d];
        ctx.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
            let (bi, ti) = (row / t, row % t);
            for (hi, out) in out.chunks_mut(hd).enumerate() {
                let start = ((bi * h + hi) * t + ti) * hd;
                out.copy_from_slice(&heads_ctx[start..start + hd]);
            }
        });
        *self.probs.lock().expect("attention probs") = Some(probs);
        Ok((CpuStorage::F32(ctx), Shape::from((b, t, d))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let guard = self.probs.lock().expect("attention probs");
        let Some(probs) = guard.as_ref() else { bail!("qkv attention: backward before forward") };
        let (b, t, d, hd) = self.dims(x.dims())?;
        let h = self.heads;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        // Per head [3, t, hd] (dq, dk, dv), then scattered into [b, t, 3, h, hd].
        let mut heads_grad = vec![0f32; b * h * 3 * t * hd];
        with_data(&x, |qkv| {
            with_data(&grad, |g| {
                heads_grad.par_chunks_mut(3 * t * hd).enumerate().for_each(|(i, out)| {
                    let (bi, hi) = (i / h, i % h);
                    let [q, k, v] = head_offsets(bi, hi, (t, d, hd)).map(|o| &qkv[o..]);
                    let g = &g[bi * t * d + hi * hd..];
                    let p = &probs[i * t * t..(i + 1) * t * t];
                    let (dq, rest) = out.split_at_mut(t * hd);
                    let (dk, dv) = rest.split_at_mut(t * hd);
                    // dP = g vᵀ; dV = Pᵀ g.
                    let mut ds = vec![0f32; t * t];
                    sgemm_serial((t, t, hd), Operand::new(g, d), Operand::t(v, 3 * d), 0.0, &mut ds, t);
                    sgemm_serial((t, hd, t), Operand::t(p, t), Operand::new(g, d), 0.0, dv, hd);
                    // dS = scale · P ⊙ (dP − Σ_row dP ⊙ P): the softmax's and the scaling's backward.
                    for (ds, p) in ds.chunks_mut(t).zip(p.chunks(t)) {
                        let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                        ds.iter_mut().zip(p).for_each(|(ds, &p)| *ds = self.scale * p * (*ds - dot));
                    }
                    // dQ = dS k; dK = dSᵀ q.
                    sgemm_serial((t, hd, t), Operand::new(&ds, t), Operand::new(k, 3 * d), 0.0, dq, hd);
                    sgemm_serial((t, hd, t), Operand::t(&ds, t), Operand::new(q, 3 * d), 0.0, dk, hd);
                });
                Ok(())
            })
        })?;
        let mut dqkv = vec![0f32; b * t * 3 * d];
        dqkv.par_chunks_mut(3 * d).enumerate().for_each(|(row, out)| {
            let (bi, ti) = (row / t, row % t);
            for (j, out) in out.chunks_mut(hd).enumerate() {
                let (part, hi) = (j / h, j % h);
                let start = (((bi * h + hi) * 3 + part) * t + ti) * hd;
                out.copy_from_slice(&heads_grad[start..start + hd]);
            }
        });
        Ok(Some(Tensor::from_vec(dqkv, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// HF's `Blip2Attention` core as candle ops (what the op replaces).
    fn composed(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let (b, t, d3) = qkv.dims3()?;
        let d = d3 / 3;
        let qkv = qkv.reshape((b, t, 3, heads, d / heads))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let probs = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?, D::Minus1)?;
        probs.matmul(&v)?.permute((0, 2, 1, 3))?.reshape((b, t, d))
    }

    #[test]
    fn matches_the_composition_forward_and_backward() -> Result<()> {
        // Odd sizes: 3 sequences of 7 tokens, 4 heads of 5.
        let (heads, scale) = (4, 5f64.powf(-0.5));
        let fused = |x: &Tensor| x.apply_op1(QkvAttention::new(heads, scale as f32));
        super::super::tests::check(&[3, 7, 3 * 4 * 5], fused, |x| composed(x, heads, scale), 1e-5)
    }

    #[test]
    fn rejects_a_width_that_does_not_split_into_heads() {
        let x = Tensor::zeros((1, 2, 3 * 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = x.apply_op1(QkvAttention::new(4, 1.0)).unwrap_err().to_string();
        assert!(err.contains("does not split into 3 × 4 heads"), "{err}");
    }
}
