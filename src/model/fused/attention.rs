//! Multi-head scaled dot-product attention as one op with its backward: the ViT's (on its fused
//! `qkv` projection), the Q-Former's and OPT's (on separate q, k, v projections, OPT's causal).
//!
//! The composition (split heads: `reshape` → `transpose` → a contiguous copy of each of q, k, v;
//! `q kᵀ`; `· scale`; `+ causal mask`; softmax; dropout; `· v`; merge heads: `transpose` → a
//! contiguous copy) leaves candle's graph holding every one of those tensors until `backward`: at
//! blip2-opt-2.7b's ViT shapes (257 tokens, 16 heads of 88) and batch 2 that is ≈ 37 MB per layer,
//! where the backward needs only the attention probabilities (8.5 MB), the dropout mask, and the
//! projections the graph keeps anyway. These ops read q, k and v in place with strided products,
//! keep the probabilities (and the dropout mask as bytes) only, and write the context already in
//! `[b, t, heads · head_dim]` order. The heads run in parallel, each product on one thread.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_data, DropoutMask};
use crate::model::blas::{sgemm_serial, Operand};

/// Where an operand's heads lie in its buffer: row `i` of head `h` of sequence `b` starts at
/// `offset + b · seq_stride + i · ld + h · head_dim`.
#[derive(Clone, Copy, Debug)]
struct Side {
    offset: usize,
    seq_stride: usize,
    ld: usize,
}

impl Side {
    /// A `[b, t, width]` tensor whose columns `offset..` hold the heads.
    fn rows(offset: usize, t: usize, width: usize) -> Self {
        Side { offset, seq_stride: t * width, ld: width }
    }

    fn head<'a>(&self, data: &'a [f32], b: usize, h: usize, hd: usize) -> &'a [f32] {
        &data[self.offset + b * self.seq_stride + h * hd..]
    }
}

/// One attention call's sizes and operand layouts.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    heads: usize,
    tq: usize,
    tk: usize,
    hd: usize,
    q: Side,
    k: Side,
    v: Side,
}

/// The causal rule (OPT's mask, also after a KV cache, where the `tq` queries are the last of `tk`
/// positions): query `i` sees the keys `j < visible_keys(i, tq, tk)`, i.e. `j ≤ i + tk − tq`.
pub fn visible_keys(query: usize, tq: usize, tk: usize) -> usize {
    query + 1 + tk - tq
}

/// Causal attention needs every query to see at least one key: `tk ≥ tq`.
pub fn check_causal(tq: usize, tk: usize) -> Result<()> {
    if tk < tq {
        bail!("causal attention needs at least as many keys ({tk}) as queries ({tq})");
    }
    Ok(())
}

/// What both ops share: `softmax(scale · q kᵀ [+ causal]) [⊙ dropout] v`.
pub struct Core {
    heads: usize,
    scale: f32,
    /// OPT's causal rule ([`visible_keys`]).
    causal: bool,
    /// Attention dropout's mask of the probabilities [b, heads, tq, tk].
    dropout: Option<DropoutMask>,
    /// The attention probabilities [b, heads, tq, tk] from the forward pass, for the backward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

impl Core {
    pub fn new(heads: usize, scale: f32, causal: bool, dropout: Option<DropoutMask>) -> Self {
        Core { heads, scale, causal, dropout, probs: Mutex::new(None) }
    }

    /// `ctx` [b, tq, heads · hd] for the operands in `data` (one buffer per operand).
    fn forward(&self, g: &Geometry, [q, k, v]: [&[f32]; 3]) -> Result<Vec<f32>> {
        let (tq, tk, hd) = (g.tq, g.tk, g.hd);
        if let Some(m) = &self.dropout {
            if m.keep.len() != g.batch * g.heads * tq * tk {
                bail!("attention dropout mask of {} for {} probabilities", m.keep.len(), g.batch * g.heads * tq * tk);
            }
        }
        let mut probs = vec![0f32; g.batch * g.heads * tq * tk];
        let mut heads_ctx = vec![0f32; g.batch * g.heads * tq * hd];
        probs.par_chunks_mut(tq * tk).zip(heads_ctx.par_chunks_mut(tq * hd)).enumerate().for_each(|(i, (p, c))| {
            let (bi, hi) = (i / g.heads, i % g.heads);
            let (qh, kh, vh) = (g.q.head(q, bi, hi, hd), g.k.head(k, bi, hi, hd), g.v.head(v, bi, hi, hd));
            sgemm_serial((tq, tk, hd), Operand::new(qh, g.q.ld), Operand::t(kh, g.k.ld), 0.0, p, tk);
            for (row, p) in p.chunks_mut(tk).enumerate() {
                let visible = if self.causal { visible_keys(row, tq, tk) } else { tk };
                let (p, hidden) = p.split_at_mut(visible);
                hidden.fill(0.0);
                let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for x in p.iter_mut() {
                    *x = ((*x - max) * self.scale).exp();
                    sum += *x;
                }
                p.iter_mut().for_each(|x| *x /= sum);
            }
            let dropped = self.dropped(i, p, tq * tk);
            sgemm_serial((tq, hd, tk), Operand::new(&dropped, tk), Operand::new(vh, g.v.ld), 0.0, c, hd);
        });
        *self.probs.lock().expect("attention probs") = Some(probs);
        let mut ctx = vec![0f32; g.batch * tq * g.heads * hd];
        merge_heads(&heads_ctx, (tq * hd, 0), g, tq, &mut ctx, (g.heads * hd, 0));
        Ok(ctx)
    }

    /// Head `i`'s probabilities after dropout (a copy only when there is dropout).
    fn dropped<'a>(&self, i: usize, p: &'a [f32], len: usize) -> std::borrow::Cow<'a, [f32]> {
        match &self.dropout {
            None => std::borrow::Cow::Borrowed(p),
            Some(m) => {
                let mut dropped = p.to_vec();
                m.apply_in_place(i * len, &mut dropped);
                std::borrow::Cow::Owned(dropped)
            }
        }
    }

    /// Per head `i`, `[dq (tq × hd) | dk (tk × hd) | dv (tk × hd)]`, for the context's gradient `grad`
    /// [b, tq, heads · hd].
    fn backward(&self, g: &Geometry, [q, k, v]: [&[f32]; 3], grad: &[f32]) -> Result<Vec<f32>> {
        let guard = self.probs.lock().expect("attention probs");
        let Some(probs) = guard.as_ref() else { bail!("attention: backward before forward") };
        let (tq, tk, hd) = (g.tq, g.tk, g.hd);
        let width = g.heads * hd;
        let block = (tq + 2 * tk) * hd;
        let mut out = vec![0f32; g.batch * g.heads * block];
        out.par_chunks_mut(block).enumerate().for_each(|(i, out)| {
            let (bi, hi) = (i / g.heads, i % g.heads);
            let (qh, kh, vh) = (g.q.head(q, bi, hi, hd), g.k.head(k, bi, hi, hd), g.v.head(v, bi, hi, hd));
            let gh = &grad[bi * tq * width + hi * hd..];
            let p = &probs[i * tq * tk..(i + 1) * tq * tk];
            let (dq, rest) = out.split_at_mut(tq * hd);
            let (dk, dv) = rest.split_at_mut(tk * hd);
            // dV = dropout(P)ᵀ g; d dropout(P) = g vᵀ, then through the mask.
            let dropped = self.dropped(i, p, tq * tk);
            sgemm_serial((tk, hd, tq), Operand::t(&dropped, tk), Operand::new(gh, width), 0.0, dv, hd);
            let mut ds = vec![0f32; tq * tk];
            sgemm_serial((tq, tk, hd), Operand::new(gh, width), Operand::t(vh, g.v.ld), 0.0, &mut ds, tk);
            if let Some(m) = &self.dropout {
                m.apply_in_place(i * tq * tk, &mut ds);
            }
            // dS = scale · P ⊙ (dP − Σ_row dP ⊙ P): the softmax's and the scaling's backward (masked
            // positions have P = 0 and get none).
            for (ds, p) in ds.chunks_mut(tk).zip(p.chunks(tk)) {
                let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                ds.iter_mut().zip(p).for_each(|(ds, &p)| *ds = self.scale * p * (*ds - dot));
            }
            // dQ = dS k; dK = dSᵀ q.
            sgemm_serial((tq, hd, tk), Operand::new(&ds, tk), Operand::new(kh, g.k.ld), 0.0, dq, hd);
            sgemm_serial((tk, hd, tq), Operand::t(&ds, tk), Operand::new(qh, g.q.ld), 0.0, dk, hd);
        });
        Ok(out)
    }
}

/// Writes per-head blocks into rows: row `r` (sequence `r / t`, token `r % t`) of `dst` (row length
/// `dst_ld`, heads from column `dst_col`) gets, for each head, `t × hd` block rows that start
/// `part_start` into each `block_len` block of `blocks`.
fn merge_heads(
    blocks: &[f32],
    (block_len, part_start): (usize, usize),
    g: &Geometry,
    t: usize,
    dst: &mut [f32],
    (dst_ld, dst_col): (usize, usize),
) {
    let hd = g.hd;
    dst.par_chunks_mut(dst_ld).enumerate().for_each(|(r, row)| {
        let (bi, ti) = (r / t, r % t);
        for (hi, out) in row[dst_col..dst_col + g.heads * hd].chunks_mut(hd).enumerate() {
            let start = (bi * g.heads + hi) * block_len + part_start + ti * hd;
            out.copy_from_slice(&blocks[start..start + hd]);
        }
    });
}

fn heads_of(width: usize, heads: usize) -> Result<usize> {
    if heads == 0 || !width.is_multiple_of(heads) {
        bail!("attention: width {width} does not split into {heads} heads");
    }
    Ok(width / heads)
}

/// Attention on a fused projection `qkv` [b, t, 3·d] laid out as HF's `reshape(b, t, 3, heads,
/// d / heads)` (the ViT's `Blip2Attention`); output [b, t, d]. Backward gives `qkv` its gradient.
pub struct QkvAttention(pub Core);

impl QkvAttention {
    fn geometry(&self, dims: &[usize]) -> Result<Geometry> {
        let &[b, t, d3] = dims else { bail!("qkv attention takes [b, t, 3·d], got {dims:?}") };
        if d3 % 3 != 0 || t == 0 {
            bail!("qkv attention: {dims:?} does not split into q, k, v");
        }
        let d = d3 / 3;
        let hd = heads_of(d, self.0.heads)?;
        let side = |part| Side::rows(part * d, t, d3);
        Ok(Geometry { batch: b, heads: self.0.heads, tq: t, tk: t, hd, q: side(0), k: side(1), v: side(2) })
    }
}

impl CustomOp1 for QkvAttention {
    fn name(&self) -> &'static str {
        "fused-qkv-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s, l)?;
        let g = self.geometry(l.dims())?;
        let ctx = self.0.forward(&g, [qkv; 3])?;
        Ok((CpuStorage::F32(ctx), Shape::from((g.batch, g.tq, g.heads * g.hd))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.geometry(x.dims())?;
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let blocks = with_data(&x, |qkv| with_data(&grad, |grad| self.0.backward(&g, [qkv; 3], grad)))?;
        let (t, d) = (g.tq, g.heads * g.hd);
        let mut dqkv = vec![0f32; g.batch * t * 3 * d];
        for part in 0..3 {
            merge_heads(&blocks, (3 * t * g.hd, part * t * g.hd), &g, t, &mut dqkv, (3 * d, part * d));
        }
        Ok(Some(Tensor::from_vec(dqkv, x.shape(), x.device())?))
    }
}

/// Attention on separate projections q [b, tq, d], k and v [b, tk, d]; output [b, tq, d]. Backward
/// gives each its gradient.
pub struct Attention(pub Core);

impl Attention {
    fn geometry(&self, q: &[usize], k: &[usize], v: &[usize]) -> Result<Geometry> {
        let (&[b, tq, d], &[bk, tk, dk]) = (q, k) else { bail!("attention takes [b, t, d] q, k, v: {q:?} {k:?}") };
        if (bk, dk) != (b, d) || v != k || tq == 0 || tk == 0 {
            bail!("attention: q {q:?}, k {k:?}, v {v:?} do not fit together");
        }
        if self.0.causal {
            check_causal(tq, tk)?;
        }
        let hd = heads_of(d, self.0.heads)?;
        Ok(Geometry {
            batch: b,
            heads: self.0.heads,
            tq,
            tk,
            hd,
            q: Side::rows(0, tq, d),
            k: Side::rows(0, tk, d),
            v: Side::rows(0, tk, d),
        })
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(lq.dims(), lk.dims(), lv.dims())?;
        let ctx = self.0.forward(&g, [f32_slice(sq, lq)?, f32_slice(sk, lk)?, f32_slice(sv, lv)?])?;
        Ok((CpuStorage::F32(ctx), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(q.dims(), k.dims(), v.dims())?;
        let (q, k, v, grad) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, grad.contiguous()?);
        let blocks = with_data(&q, |qd| {
            with_data(&k, |kd| with_data(&v, |vd| with_data(&grad, |gd| self.0.backward(&g, [qd, kd, vd], gd))))
        })?;
        let (tq, tk, hd, d) = (g.tq, g.tk, g.hd, g.heads * g.hd);
        let block = (tq + 2 * tk) * hd;
        let part = |start: usize, t: usize, like: &Tensor| -> Result<Tensor> {
            let mut out = vec![0f32; g.batch * t * d];
            merge_heads(&blocks, (block, start), &g, t, &mut out, (d, 0));
            Tensor::from_vec(out, like.shape(), like.device())
        };
        // Only tracked operands get a gradient: candle would keep any other one in its store unread
        // (the Q-Former's cross-attention k and v come from a frozen ViT, for instance).
        let grad_of = |start: usize, t: usize, x: &Tensor| x.track_op().then(|| part(start, t, x)).transpose();
        Ok((grad_of(0, tq, &q)?, grad_of(tq * hd, tk, &k)?, grad_of((tq + tk) * hd, tk, &v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn split(x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, heads, d / heads))?.transpose(1, 2)?.contiguous()
    }

    /// The attention as candle ops (what the ops replace), with an optional causal mask and a
    /// dropout mask given as 0/1 floats.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        scale: f64,
        causal: bool,
        dropout: Option<(&Tensor, f64)>,
    ) -> Result<Tensor> {
        let (b, tq, d) = q.dims3()?;
        let tk = k.dim(1)?;
        let mut scores = (split(q, heads)?.matmul(&split(k, heads)?.t()?)? * scale)?;
        if causal {
            let mask: Vec<f32> = (0..tq)
                .flat_map(|i| (0..tk).map(move |j| if j > i + tk - tq { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            scores = scores.broadcast_add(&Tensor::from_vec(mask, (1, 1, tq, tk), q.device())?)?;
        }
        let mut probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        if let Some((keep, s)) = dropout {
            probs = ((probs * keep)? * s)?;
        }
        probs.matmul(&split(v, heads)?)?.transpose(1, 2)?.reshape((b, tq, d))
    }

    #[test]
    fn qkv_attention_matches_the_composition_forward_and_backward() -> Result<()> {
        // Odd sizes: 3 sequences of 7 tokens, 4 heads of 5.
        let (heads, scale) = (4, 5f64.powf(-0.5));
        let fused = |x: &Tensor| x.apply_op1(QkvAttention(Core::new(heads, scale as f32, false, None)));
        let reference = |x: &Tensor| {
            let (q, k, v) = (x.narrow(2, 0, 20)?, x.narrow(2, 20, 20)?, x.narrow(2, 40, 20)?);
            composed(&q, &k, &v, heads, scale, false, None)
        };
        super::super::tests::check(&[3, 7, 3 * 4 * 5], fused, reference, 1e-5)
    }

    /// Separate q, k, v with every option: cross-attention lengths, causal after a "cache", dropout.
    #[test]
    fn attention_matches_the_composition_with_causal_mask_and_dropout() -> Result<()> {
        let dev = Device::Cpu;
        let (b, heads, hd, scale) = (2, 3, 4, 0.37);
        let d = heads * hd;
        for (tq, tk, causal, dropout) in [(5, 9, false, false), (6, 6, true, false), (4, 7, true, true)] {
            let what = format!("tq {tq}, tk {tk}, causal {causal}, dropout {dropout}");
            let q = Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, tq, d), &dev)?)?;
            let k = Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, tk, d), &dev)?)?;
            let v = Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, tk, d), &dev)?)?;
            let keep: Vec<u8> = (0..b * heads * tq * tk).map(|i| u8::from(i % 3 != 0)).collect();
            let keep_f = Tensor::from_vec(keep.iter().map(|&k| f32::from(k)).collect(), (b, heads, tq, tk), &dev)?;
            let mask = dropout.then_some(DropoutMask { keep, scale: 1.5 });
            let op = Attention(Core::new(heads, scale as f32, causal, mask));
            let fused = q.as_tensor().apply_op3(k.as_tensor(), v.as_tensor(), op)?;
            let reference = composed(&q, &k, &v, heads, scale, causal, dropout.then_some((&keep_f, 1.5)))?;
            let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar() };
            assert!(diff(&fused, &reference)? < 1e-5, "{what}: forward");
            let r = Tensor::randn(0f32, 1., reference.shape(), &dev)?;
            let gf = (fused * &r)?.sum_all()?.backward()?;
            let gr = (reference * &r)?.sum_all()?.backward()?;
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (gf.get(x).expect("fused grad"), gr.get(x).expect("reference grad"));
                assert!(diff(a, b)? < 1e-4, "{what}: d{name} differs by {}", diff(a, b)?);
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_shapes_that_do_not_fit() {
        let x = Tensor::zeros((1, 2, 3 * 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = x.apply_op1(QkvAttention(Core::new(4, 1.0, false, None))).unwrap_err().to_string();
        assert!(err.contains("does not split into 4 heads"), "{err}");
        let (q, k) = (x.narrow(2, 0, 8).unwrap(), x.narrow(2, 0, 4).unwrap());
        let err = q.apply_op3(&k, &k, Attention(Core::new(2, 1.0, false, None))).unwrap_err().to_string();
        assert!(err.contains("do not fit together"), "{err}");
    }
}
