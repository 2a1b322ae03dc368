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

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::blas;

mod attention;
pub use attention::{Attention, Core as AttentionCore, QkvAttention};

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

/// A dropout keep mask: 0/1 bytes, and the kept values' scale (1 / keep probability). Bytes, where a
/// float mask would hold 4× the memory for as long as the graph lives.
#[derive(Debug)]
pub struct DropoutMask {
    pub keep: Vec<u8>,
    pub scale: f32,
}

impl DropoutMask {
    /// `x ⊙ mask` (zero where dropped, `x · scale` where kept).
    fn apply(&self, x: &[f32]) -> Result<Vec<f32>> {
        if self.keep.len() != x.len() {
            bail!("dropout mask of {} elements for a tensor of {}", self.keep.len(), x.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(MIN_ELEMS_PER_TASK)
            .zip(x.par_chunks(MIN_ELEMS_PER_TASK))
            .zip(self.keep.par_chunks(MIN_ELEMS_PER_TASK))
            .for_each(|((y, x), keep)| {
                for ((y, &x), &k) in y.iter_mut().zip(x).zip(keep) {
                    *y = if k != 0 { x * self.scale } else { 0.0 };
                }
            });
        Ok(y)
    }
}

/// `x @ wᵀ + b` for a frozen `w` [out, in] (and `b` [out]); `x` [..., in]. Backward: `grad @ w` to
/// `x` only.
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl CustomOp1 for Linear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (n, k) = self.w.dims2()?;
        if last_dim(l)? != k {
            bail!("linear: input {:?} does not end in {k}", l.dims());
        }
        let m = x.len() / k;
        let mut y = vec![0f32; m * n];
        let beta = match &self.b {
            Some(b) => {
                with_data(b, |b| {
                    y.par_chunks_mut(n * rows_per_task(n))
                        .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(b)));
                    Ok(())
                })?;
                1.0
            }
            None => 0.0,
        };
        with_data(&self.w, |w| {
            blas::sgemm((m, n, k), x, k, w, k, true, beta, &mut y, n);
            Ok(())
        })?;
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&GradInput { w: self.w.clone() })?))
    }
}

/// A frozen linear with a trainable LoRA branch, on (x, A [r, in], B [out, r]):
/// `y = x wᵀ + b + scale · ((mask ⊙ x) Aᵀ) Bᵀ`. Backward recomputes the rank-r product `u` from `x`
/// (cheap) instead of keeping the branch's activations:
/// `dB = scale · gradᵀ u`, `dA = (scale · grad B)ᵀ (mask ⊙ x)`, `dx = grad w + mask ⊙ (scale · grad B) A`.
pub struct LoraLinear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    /// LoRA dropout's mask of `x`'s shape, when dropout applies.
    pub mask: Option<std::sync::Arc<DropoutMask>>,
    pub scale: f32,
}

impl LoraLinear {
    fn masked(&self, x: &Tensor) -> Result<Tensor> {
        match &self.mask {
            Some(m) => x.apply_op1_no_bwd(&Mask { mask: m.clone() }),
            None => Ok(x.clone()),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear-lora"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (base, shape) = Linear { w: self.w.clone(), b: self.b.clone() }.cpu_fwd(sx, lx)?;
        let CpuStorage::F32(mut y) = base else { unreachable!("the linear returns f32") };
        let (x, a, b) = (f32_slice(sx, lx)?, f32_slice(sa, la)?, f32_slice(sb, lb)?);
        let (r, k) = la.shape().dims2()?;
        let (n, r2) = lb.shape().dims2()?;
        if r != r2 || last_dim(lx)? != k || n != *shape.dims().last().expect("rank >= 1") {
            bail!("lora linear: A {:?}, B {:?} for input {:?}", la.dims(), lb.dims(), lx.dims());
        }
        let m = x.len() / k;
        let masked;
        let h = match &self.mask {
            Some(mask) => {
                masked = mask.apply(x)?;
                &masked[..]
            }
            None => x,
        };
        // u = scale · h Aᵀ [m, r], then y += u Bᵀ.
        let mut u = vec![0f32; m * r];
        blas::sgemm((m, r, k), h, k, a, k, true, 0.0, &mut u, r);
        u.iter_mut().for_each(|v| *v *= self.scale);
        blas::sgemm((m, n, r), &u, r, b, r, true, 1.0, &mut y, n);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The first adapted layer's input comes from frozen weights only: no gradient to compute.
        let need_dx = x.track_op();
        // Plain tensor ops on detached operands (no graph); the rank-r products are small.
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let k = a.dim(1)?;
        let n = b.dim(0)?;
        let rows = x.elem_count() / k;
        let h = self.masked(&x.contiguous()?)?.reshape((rows, k))?;
        let g = grad.contiguous()?.reshape((rows, n))?;
        let u = (h.matmul(&a.t()?)? * self.scale as f64)?; // [rows, r]
        let grad_b = g.t()?.matmul(&u)?; // [n, r]
        let du = (g.matmul(&b)? * self.scale as f64)?; // [rows, r]
        let grad_a = du.t()?.matmul(&h)?; // [r, k]
        let grad_x = if need_dx {
            let through_lora = self.masked(&du.matmul(&a)?.reshape(x.shape())?)?;
            let through_w = grad.contiguous()?.apply_op1_no_bwd(&GradInput { w: self.w.clone() })?;
            Some((through_w + through_lora)?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_a), Some(grad_b)))
    }
}

/// `grad @ w`: the linear's input gradient.
struct GradInput {
    w: Tensor,
}

impl CustomOp1 for GradInput {
    fn name(&self) -> &'static str {
        "fused-frozen-linear-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l)?;
        let (n, k) = self.w.dims2()?;
        let m = g.len() / n;
        let mut out = vec![0f32; m * k];
        with_data(&self.w, |w| {
            blas::sgemm((m, k, n), g, n, w, k, false, 0.0, &mut out, k);
            Ok(())
        })?;
        let mut dims = l.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = k;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// The MLP activation between the two linears of [`Mlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU (ViT, Q-Former).
    Gelu,
    /// ReLU (OPT).
    Relu,
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Relu => x.max(0.0),
        }
    }

    fn derivative(self, x: f32) -> f32 {
        match self {
            Activation::Gelu => gelu_grad(x),
            // torch's relu backward: 0 at x = 0.
            Activation::Relu => f32::from(x > 0.0),
        }
    }
}

/// A frozen linear's weight [out, in] and bias.
pub type FrozenLinear = (Tensor, Option<Tensor>);

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
    /// The LayerNorm's weight, bias and eps.
    pub norm: (Tensor, Tensor, f32),
    /// Dropout of the MLP's output (OPT's hidden dropout), when it applies.
    pub dropout: Option<std::sync::Arc<DropoutMask>>,
    /// `fc1(LN(x))` from the forward pass, for the backward pass.
    hidden: std::sync::Mutex<Option<Vec<f32>>>,
}

impl Mlp {
    pub fn new(
        (fc1, activation, fc2): (FrozenLinear, Activation, FrozenLinear),
        norm: (Tensor, Tensor, f32),
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
        let (w, b, eps) = &self.norm;
        let normed = CpuStorage::F32(layer_norm_rows(x, last_dim(l)?, w, b, *eps)?);
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
        let mut dx = with_data(&x, |x| layer_norm_grad_rows(x, &d_normed, k, &self.norm.0, self.norm.2))?;
        with_data(&grad, |g| {
            add_assign(&mut dx, g);
            Ok(())
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `y += x`, in parallel.
fn add_assign(y: &mut [f32], x: &[f32]) {
    y.par_chunks_mut(MIN_ELEMS_PER_TASK)
        .zip(x.par_chunks(MIN_ELEMS_PER_TASK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += x));
}

/// `residual + dropout(x wᵀ + b)` for a frozen `w` [out, in] on (x, residual): an output projection
/// and its residual connection. The composition keeps the projection's output and its dropped copy
/// for the backward of the add; this op keeps nothing beyond its inputs, which the graph holds
/// anyway. Backward: `(grad [⊙ dropout]) w` to `x`, `grad` to `residual`.
pub struct ResidualLinear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub dropout: Option<std::sync::Arc<DropoutMask>>,
}

impl CustomOp2 for ResidualLinear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear-residual"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sr: &CpuStorage, lr: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = Linear { w: self.w.clone(), b: self.b.clone() }.cpu_fwd(sx, lx)?;
        let CpuStorage::F32(y) = y else { unreachable!("the linear returns f32") };
        if shape.dims() != lr.dims() {
            bail!("residual linear: output {:?} cannot be added to the residual {:?}", shape.dims(), lr.dims());
        }
        let mut y = match &self.dropout {
            Some(mask) => mask.apply(&y)?,
            None => y,
        };
        add_assign(&mut y, f32_slice(sr, lr)?);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, r: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = match &self.dropout {
            Some(mask) => grad.apply_op1_no_bwd(&Mask { mask: mask.clone() })?,
            None => grad.clone(),
        };
        let dx = if x.track_op() { Some(g.apply_op1_no_bwd(&GradInput { w: self.w.clone() })?) } else { None };
        Ok((dx, r.track_op().then_some(grad)))
    }
}

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
        let y = layer_norm_rows(x, d, &self.w, &self.b, self.eps)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = LayerNormGrad { w: self.w.clone(), eps: self.eps };
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// LayerNorm of each row of `x` (rows of `d`) with weight `w` and bias `b`.
fn layer_norm_rows(x: &[f32], d: usize, w: &Tensor, b: &Tensor, eps: f32) -> Result<Vec<f32>> {
    with_data(w, |w| {
        with_data(b, |b| {
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

/// LayerNorm's input gradient for the rows of `x` given the output gradient `g`:
/// `rstd · (g·w − mean(g·w) − x̂ · mean(g·w·x̂))`.
fn layer_norm_grad_rows(x: &[f32], g: &[f32], d: usize, w: &Tensor, eps: f32) -> Result<Vec<f32>> {
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

/// LayerNorm's input gradient from (x, grad) ([`layer_norm_grad_rows`]).
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
        let dx = layer_norm_grad_rows(x, g, d, &self.w, self.eps)?;
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
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

/// `x ⊙ mask` for a dropout mask of `x`'s shape; backward `grad ⊙ mask`.
pub struct Mask {
    pub mask: std::sync::Arc<DropoutMask>,
}

impl CustomOp1 for Mask {
    fn name(&self) -> &'static str {
        "fused-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.mask.apply(f32_slice(s, l)?)?), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Mask { mask: self.mask.clone() })?))
    }
}

#[cfg(test)]
mod tests {
    //! Each fused op against candle's composed ops: forward values and input gradients.
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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

    #[test]
    fn linear_matches_matmul_plus_bias_and_leaves_weights_without_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (6, 5), &dev)?;
        let b = Tensor::randn(0f32, 0.5, 6, &dev)?;
        for bias in [None, Some(&b)] {
            let op = || Linear { w: w.clone(), b: bias.cloned() };
            let reference = |x: &Tensor| {
                let y = x.broadcast_matmul(&w.t()?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            };
            check(&[2, 3, 5], |x| x.apply_op1(op()), reference, 1e-5)?;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 5), &dev)?)?;
        let grads = x.as_tensor().apply_op1(Linear { w: w.clone(), b: Some(b.clone()) })?.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none(), "frozen parameters got gradients");
        Ok(())
    }

    #[test]
    fn lora_linear_matches_the_composed_branch_with_and_without_dropout() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (6, 5), &dev)?;
        let bias = Tensor::randn(0f32, 0.5, 6, &dev)?;
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (2, 5), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (6, 2), &dev)?)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev)?)?;
        let keep: Vec<u8> = (0..30).map(|i| u8::from(i % 3 != 0)).collect();
        let keep_f = Tensor::from_vec(keep.iter().map(|&k| f32::from(k) * 1.5).collect(), (2, 3, 5), &dev)?;
        let r = Tensor::randn(0f32, 1., (2, 3, 6), &dev)?;
        for mask in [None, Some(std::sync::Arc::new(DropoutMask { keep: keep.clone(), scale: 1.5 }))] {
            let op = LoraLinear { w: w.clone(), b: Some(bias.clone()), mask: mask.clone(), scale: 2.0 };
            let fused = x.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op)?;
            let h = match &mask {
                Some(_) => (x.as_tensor() * &keep_f)?,
                None => x.as_tensor().clone(),
            };
            let lora = (h.broadcast_matmul(&a.as_tensor().t()?)?.broadcast_matmul(&b.as_tensor().t()?)? * 2.0)?;
            let reference = (x.as_tensor().broadcast_matmul(&w.t()?)?.broadcast_add(&bias)? + lora)?;
            assert!(max_diff(&fused, &reference) < 1e-5, "forward differs by {}", max_diff(&fused, &reference));
            let gf = (fused * &r)?.sum_all()?.backward()?;
            let gr = (reference * &r)?.sum_all()?.backward()?;
            for (name, t) in [("x", x.as_tensor()), ("A", a.as_tensor()), ("B", b.as_tensor())] {
                let (f, g) = (gf.get(t).expect("fused grad"), gr.get(t).expect("reference grad"));
                assert!(max_diff(f, g) < 1e-4, "d{name} differs by {} (mask: {})", max_diff(f, g), mask.is_some());
            }
            assert!(gf.get(&w).is_none() && gf.get(&bias).is_none(), "frozen parameters got gradients");
        }
        // An input computed from frozen weights only (the first adapted layer) gets no gradient.
        let x = Tensor::randn(0f32, 1., (3, 5), &dev)?;
        let op = LoraLinear { w: w.clone(), b: None, mask: None, scale: 2.0 };
        let grads = x.apply_op3(a.as_tensor(), b.as_tensor(), op)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none() && grads.get(a.as_tensor()).is_some());
        Ok(())
    }

    /// A byte mask over `n` elements and the same mask as floats (0 or `scale`) of `shape`.
    fn masks(shape: &[usize], scale: f32) -> Result<(std::sync::Arc<DropoutMask>, Tensor)> {
        let n = shape.iter().product();
        let keep: Vec<u8> = (0..n).map(|i| u8::from(i % 4 != 1)).collect();
        let floats = Tensor::from_vec(keep.iter().map(|&k| f32::from(k) * scale).collect(), shape, &Device::Cpu)?;
        Ok((std::sync::Arc::new(DropoutMask { keep, scale }), floats))
    }

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
                Mlp::new(mlp, (lw.clone(), lb.clone(), 1e-5), dropout.then(|| mask.clone()))
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

    #[test]
    fn residual_linear_matches_linear_dropout_add() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = (Tensor::randn(0f32, 0.5, (4, 5), &dev)?, Tensor::randn(0f32, 0.5, 4, &dev)?);
        let residual = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4), &dev)?)?;
        let (mask, mask_f) = masks(&[2, 3, 4], 2.0)?;
        for dropout in [false, true] {
            let op = || ResidualLinear { w: w.clone(), b: Some(b.clone()), dropout: dropout.then(|| mask.clone()) };
            let reference = |x: &Tensor| {
                let y = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
                residual.as_tensor() + if dropout { (y * &mask_f)? } else { y }
            };
            check(&[2, 3, 5], |x| x.apply_op2(residual.as_tensor(), op()), reference, 1e-5)?;
            // The residual's gradient is the output's; the frozen weight gets none.
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev)?)?;
            let r = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
            let grads = (x.as_tensor().apply_op2(residual.as_tensor(), op())? * &r)?.sum_all()?.backward()?;
            assert_eq!(grads.get(residual.as_tensor()).expect("residual grad").to_vec3::<f32>()?, r.to_vec3::<f32>()?);
            assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        }
        // An untracked residual (the first layer's input) gets no gradient buffer.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev)?)?;
        let fixed = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let op = ResidualLinear { w: w.clone(), b: None, dropout: None };
        let grads = x.as_tensor().apply_op2(&fixed, op)?.sum_all()?.backward()?;
        assert!(grads.get(&fixed).is_none() && grads.get(x.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn layer_norm_matches_the_composed_layer_norm() -> Result<()> {
        let dev = Device::Cpu;
        let (w, b) = (Tensor::randn(1f32, 0.3, 16, &dev)?, Tensor::randn(0f32, 0.3, 16, &dev)?);
        let op = || LayerNorm { w: w.clone(), b: b.clone(), eps: 1e-6 };
        check(&[3, 7, 16], |x| x.apply_op1(op()), |x| candle_nn::ops::layer_norm_slow(x, &w, &b, 1e-6), 2e-5)
    }

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

    #[test]
    fn mask_multiplies_forward_and_backward() -> Result<()> {
        let reference = Tensor::new(&[[0f32, 2.0, 2.0], [2.0, 0.0, 2.0]], &Device::Cpu)?;
        let mask = std::sync::Arc::new(DropoutMask { keep: vec![0, 1, 1, 1, 0, 1], scale: 2.0 });
        check(&[2, 3], |x| x.apply_op1(Mask { mask: mask.clone() }), |x| x * &reference, 0.0)
    }
}
