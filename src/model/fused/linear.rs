//! Frozen linears: alone ([`Linear`]), with a LoRA branch ([`LoraLinear`]), with their residual
//! ([`ResidualLinear`]); their input gradient `grad @ w`.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::*;

/// `x @ wᵀ + b` for a frozen `w` [out, in] (and `b` \[out\]); `x` [..., in]. Backward: `grad @ w` to
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
        Ok(Some(input_grad(grad, &self.w)?))
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
            let through_w = input_grad(grad, &self.w)?;
            Some((through_w + through_lora)?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_a), Some(grad_b)))
    }
}

/// `grad @ w` [..., in] for `grad` [..., out] and `w` [out, in]: a frozen linear's input gradient, on
/// any device. On CPU in f32 one GEMM (`GradInput`, OpenBLAS when loaded); elsewhere candle's
/// matmul, `w` cast to the gradient's dtype.
pub fn input_grad(grad: &Tensor, w: &Tensor) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if cpu_f32(grad) && cpu_f32(w) {
        return grad.contiguous()?.apply_op1_no_bwd(&GradInput { w: w.contiguous()? });
    }
    let dims = grad.dims().to_vec();
    let (out, lead) = dims.split_last().expect("rank >= 1");
    let rows: usize = lead.iter().product();
    let g = grad.reshape((rows, *out))?.matmul(&w.to_dtype(grad.dtype())?)?;
    let mut in_dims = lead.to_vec();
    in_dims.push(w.dim(1)?);
    g.reshape(in_dims)
}

/// `grad @ w` on CPU in f32.
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

/// A frozen linear's weight [out, in] and bias.
pub type FrozenLinear = (Tensor, Option<Tensor>);

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
        let dx = if x.track_op() { Some(input_grad(&g, &self.w)?) } else { None };
        Ok((dx, r.track_op().then_some(grad)))
    }
}

/// A frozen product computed outside the graph, re-attached to its input: forward returns its
/// second argument (the precomputed `x @ wᵀ`); backward gives [`input_grad`] to the first argument,
/// nothing to the second and nothing to `w`. For frozen weights off the fused CPU path.
pub struct GradToInputOnly {
    pub w: Tensor,
}

impl CustomOp2 for GradToInputOnly {
    fn name(&self) -> &'static str {
        "grad-to-input-only-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        contiguous_clone(s2, l2)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        contiguous_clone(s2, l2)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(grad, &self.w)?), None))
    }
}

fn contiguous_clone<S: candle_core::backend::BackendStorage>(s: &S, l: &Layout) -> Result<(S, Shape)> {
    match l.contiguous_offsets() {
        Some((0, end)) if end == l.shape().elem_count() => Ok((s.try_clone(l)?, l.shape().clone())),
        _ => bail!("grad-to-input-only-linear expects a fresh contiguous product"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, masks, max_diff};
    use super::*;
    use candle_core::{Device, Var};

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
}
