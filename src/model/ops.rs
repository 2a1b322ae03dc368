//! The one place that picks kernels: candle's fused ops for inference, and for training either our
//! fused CPU kernels with their backward ([`super::fused`], CPU f32 with frozen parameters) or
//! candle's differentiable compositions (other devices, trainable base parameters).
//!
//! candle's fused `softmax_last_dim` and `layer_norm` are built with `apply_op*_no_bwd`: a graph that
//! goes through them silently gets no gradient. Every model file calls these helpers with the
//! [`Mode`] it runs in instead of calling candle directly, so a training forward can never pick a
//! kernel without a backward pass. Modules hand their parameters over as views ([`LinearParams`],
//! [`NormParams`]), so this file depends on no model module.

use candle_core::{CustomOp1, CustomOp3, DType, Result, Tensor, D};

use super::fused;
pub use super::fused::dropout::seed_dropout;
pub use super::fused::Activation;
use super::lora::LoraBranch;

/// Whether all of `ts` can go through the fused CPU kernels (on the CPU, in f32).
fn cpu_f32<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> bool {
    ts.into_iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether none of `ts` is trainable.
fn frozen<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> bool {
    ts.into_iter().all(|t| !t.track_op())
}

/// A fused op with its backward in training, without a graph node in inference.
fn apply1(x: &Tensor, op: impl CustomOp1 + Send + Sync + 'static, mode: Mode) -> Result<Tensor> {
    if mode.is_train() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// [`apply1`] for three operands.
fn apply3(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    op: impl CustomOp3 + Send + Sync + 'static,
    mode: Mode,
) -> Result<Tensor> {
    if mode.is_train() {
        x.apply_op3(a, b, op)
    } else {
        x.apply_op3_no_bwd(a, b, &op)
    }
}

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Fused kernels, no dropout, no graph.
    Inference,
    /// Differentiable kernels.
    Train(TrainFlags),
}

/// What a training forward does beyond using differentiable kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrainFlags {
    /// LoRA's dropout on the adapter input (PEFT applies it in `model.train()`).
    pub lora_dropout: bool,
    /// The base model's hidden/attention dropouts (Q-Former and OPT), as `model.train()`.
    pub base_dropout: bool,
}

impl Mode {
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train(_))
    }

    fn flags(self) -> TrainFlags {
        match self {
            Mode::Train(f) => f,
            Mode::Inference => TrainFlags::default(),
        }
    }

    /// The base model's dropout probability `p` when this mode applies it.
    fn base_p(self, p: f64) -> Option<f64> {
        (p > 0.0 && self.flags().base_dropout).then_some(p)
    }

    /// LoRA's dropout probability `p` when this mode applies it.
    fn lora_p(self, p: f64) -> Option<f64> {
        (p > 0.0 && self.flags().lora_dropout).then_some(p)
    }
}

fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if cpu_f32([x]) {
        return x.contiguous()?.apply_op1(fused::Mask { mask: fused::dropout::shared(x.elem_count(), p) });
    }
    x * fused::dropout::tensor_mask(x.shape(), p, x.dtype(), x.device())?
}

/// Softmax over the last dimension, computed in f32 for half inputs (as OPT does for f16).
pub fn softmax_last_dim(x: &Tensor, mode: Mode) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = if dtype == DType::F32 { x.clone() } else { x.to_dtype(DType::F32)? };
    let y = if mode.is_train() && cpu_f32([&x32]) {
        x32.contiguous()?.apply_op1(fused::Softmax)?
    } else if mode.is_train() {
        candle_nn::ops::softmax(&x32, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&x32)?
    };
    if dtype == DType::F32 {
        Ok(y)
    } else {
        y.to_dtype(dtype)
    }
}

/// `torch.nn.LayerNorm`'s parameters, as a module hands them to the kernels.
#[derive(Clone, Copy, Debug)]
pub struct NormParams<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub eps: f64,
}

impl NormParams<'_> {
    /// `torch.nn.LayerNorm` over the last dimension.
    pub fn forward(self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        layer_norm(x, self.weight, self.bias, self.eps, mode)
    }

    /// Whether the fused CPU kernels can take it: frozen f32 parameters.
    fn fusable(self) -> bool {
        frozen([self.weight, self.bias]) && cpu_f32([self.weight, self.bias])
    }

    fn fused(self) -> Result<fused::LayerNorm> {
        Ok(fused::LayerNorm { w: self.weight.contiguous()?, b: self.bias.contiguous()?, eps: self.eps as f32 })
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, mode: Mode) -> Result<Tensor> {
    let params = NormParams { weight, bias, eps };
    if mode.is_train() && cpu_f32([x]) && params.fusable() {
        x.contiguous()?.apply_op1(params.fused()?)
    } else if mode.is_train() {
        candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)
    } else {
        let x = x.contiguous()?;
        candle_nn::ops::layer_norm(&x, weight, bias, eps as f32)
    }
}

/// Exact (erf) GELU, HF's `"gelu"`.
pub fn gelu(x: &Tensor, mode: Mode) -> Result<Tensor> {
    if mode.is_train() && cpu_f32([x]) {
        x.contiguous()?.apply_op1(fused::Gelu)
    } else {
        x.gelu_erf()
    }
}

/// Dropout of the base model (Q-Former and OPT hidden/attention dropouts).
pub fn base_dropout(x: &Tensor, p: f64, mode: Mode) -> Result<Tensor> {
    match mode.base_p(p) {
        Some(p) => dropout(x, p),
        None => Ok(x.clone()),
    }
}

/// LoRA's dropout on the adapter's input.
pub fn lora_dropout(x: &Tensor, p: f64, mode: Mode) -> Result<Tensor> {
    match mode.lora_p(p) {
        Some(p) => dropout(x, p),
        None => Ok(x.clone()),
    }
}

/// A linear layer's parameters (and its unmerged LoRA branch), as a module hands them to the kernels.
#[derive(Clone, Copy, Debug)]
pub struct LinearParams<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub lora: Option<&'a LoraBranch>,
}

impl<'a> LinearParams<'a> {
    /// `x @ wᵀ + b [+ LoRA]` ([`linear`] or [`lora_linear`]).
    pub fn forward(self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self.lora {
            Some(lora) => lora_linear(x, self.weight, self.bias, lora, mode),
            None => linear(x, self.weight, self.bias, mode),
        }
    }

    fn tensors(self) -> impl Iterator<Item = &'a Tensor> {
        std::iter::once(self.weight).chain(self.bias)
    }

    /// Whether a fused CPU block can take it: a frozen f32 linear without LoRA.
    fn fusable(self) -> bool {
        self.lora.is_none() && frozen(self.tensors()) && cpu_f32(self.tensors())
    }

    fn parts(self) -> Result<fused::FrozenLinear> {
        Ok((self.weight.contiguous()?, self.bias.map(Tensor::contiguous).transpose()?))
    }
}

/// `x @ wᵀ + bias` for a weight `w` [out, in], with `x` of any rank ≥ 2 ([..., in]).
///
/// One GEMM over the flattened leading dimensions. candle's matmul backward would also compute (and
/// allocate) the gradient of `w`, and its bias add a gradient of the bias, both frozen: on CPU in f32
/// the whole layer is [`fused::Linear`] (OpenBLAS when loaded, bias folded into the GEMM, input
/// gradient only); elsewhere the product is computed outside the graph and re-attached to `x` through
/// [`fused::GradToInputOnly`]. Trainable weights (full training) take candle's ordinary ops.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
    let params = std::iter::once(w).chain(bias);
    if frozen(params.clone()) && cpu_f32(params.chain([x])) {
        let op = fused::Linear { w: w.contiguous()?, b: bias.map(Tensor::contiguous).transpose()? };
        return apply1(&x.contiguous()?, op, mode);
    }
    let y = frozen_matmul(x, w, mode)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x @ wᵀ + bias + scale · B(A(dropout(x)))`: a linear with an unmerged LoRA branch (PEFT 0.6's
/// `Linear.forward`, the branch in the adapter's dtype, f32).
///
/// On CPU in f32 with a frozen base it is one [`fused::LoraLinear`]: the graph keeps `x`, the
/// dropout mask and the output, where the composition also keeps the masked input, `B`'s output,
/// its scaled copy and the sum (three activations of the layer's output size, per adapted linear).
pub fn lora_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, lora: &LoraBranch, mode: Mode) -> Result<Tensor> {
    let base = std::iter::once(w).chain(bias);
    if frozen(base.clone()) && cpu_f32(base.chain([x, &lora.a, &lora.b])) {
        let x = x.contiguous()?;
        let mask = mode.lora_p(lora.dropout).map(|p| fused::dropout::shared(x.elem_count(), p));
        let op = fused::LoraLinear {
            w: w.contiguous()?,
            b: bias.map(Tensor::contiguous).transpose()?,
            mask,
            scale: lora.scale as f32,
        };
        return apply3(&x, &lora.a.contiguous()?, &lora.b.contiguous()?, op, mode);
    }
    let y = linear(x, w, bias, mode)?;
    let h = lora_dropout(x, lora.dropout, mode)?.to_dtype(lora.a.dtype())?;
    let delta = (h.broadcast_matmul(&lora.a.t()?)?.broadcast_matmul(&lora.b.t()?)? * lora.scale)?;
    let delta = delta.to_dtype(y.dtype())?;
    y + delta
}

/// `x + dropout(fc2(act(fc1(ln(x)))))`: a pre-LN transformer's feed-forward block with its residual
/// (the ViT's `layer_norm2` + MLP, OPT's `final_layer_norm` + `fc1`/`fc2` + hidden dropout). In
/// training on CPU in f32 with frozen parameters it is one [`fused::Mlp`], which keeps
/// `fc1(ln(x))` only; otherwise the composition.
pub fn pre_norm_mlp_block(
    x: &Tensor,
    ln: NormParams,
    (fc1, activation, fc2): (LinearParams, Activation, LinearParams),
    dropout: f64,
    mode: Mode,
) -> Result<Tensor> {
    if mode.is_train() && cpu_f32([x]) && fc1.fusable() && fc2.fusable() && ln.fusable() {
        let dropout = mode.base_p(dropout).map(|p| fused::dropout::shared(x.elem_count(), p));
        let op = fused::Mlp::new((fc1.parts()?, activation, fc2.parts()?), ln.fused()?, dropout);
        return x.contiguous()?.apply_op1(op);
    }
    let h = fc1.forward(&ln.forward(x, mode)?, mode)?;
    let h = match activation {
        Activation::Gelu => gelu(&h, mode)?,
        Activation::Relu => h.relu()?,
    };
    x + base_dropout(&fc2.forward(&h, mode)?, dropout, mode)?
}

/// `residual + dropout(linear(x))`: an output projection and its residual connection. In training on
/// CPU in f32 with a frozen linear without LoRA it is one [`fused::ResidualLinear`], which keeps no
/// activation of its own; otherwise the composition.
pub fn residual_linear(
    x: &Tensor,
    linear: LinearParams,
    residual: &Tensor,
    dropout: f64,
    mode: Mode,
) -> Result<Tensor> {
    if mode.is_train() && cpu_f32([x, residual]) && linear.fusable() {
        let dropout = mode.base_p(dropout).map(|p| fused::dropout::shared(residual.elem_count(), p));
        let (w, b) = linear.parts()?;
        return x.contiguous()?.apply_op2(&residual.contiguous()?, fused::ResidualLinear { w, b, dropout });
    }
    residual + base_dropout(&linear.forward(x, mode)?, dropout, mode)?
}

/// Multi-head self-attention on a fused projection `qkv` [b, t, 3·d], laid out as HF's
/// `reshape(b, t, 3, heads, d / heads)` (the ViT's `Blip2Attention`): `softmax(scale · q kᵀ) v` with
/// the heads concatenated, [b, t, d]. On CPU in f32 it is one [`fused::QkvAttention`] (q, k, v read
/// in place, only the probabilities kept for the backward); elsewhere candle's composition.
pub fn qkv_attention(qkv: &Tensor, heads: usize, scale: f64, mode: Mode) -> Result<Tensor> {
    if cpu_f32([qkv]) {
        let op = fused::QkvAttention(fused::AttentionCore::new(heads, scale as f32, false, None));
        return apply1(&qkv.contiguous()?, op, mode);
    }
    qkv_attention_composed(qkv, heads, scale, mode)
}

fn qkv_attention_composed(qkv: &Tensor, heads: usize, scale: f64, mode: Mode) -> Result<Tensor> {
    let d = qkv.dim(2)? / 3;
    let part = |i: usize| qkv.narrow(2, i * d, d);
    let spec = AttentionSpec { heads, scale, scale_queries: false, causal: false, dropout: 0.0 };
    attention_composed(&part(0)?, &part(1)?, &part(2)?, spec, mode)
}

/// What a multi-head attention computes besides its q, k, v.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub heads: usize,
    /// Multiplies the scores `q kᵀ`.
    pub scale: f64,
    /// Where candle's composition applies `scale`: to q before `q kᵀ` (OPT, as HF does and as the
    /// KV-cache path does) or to the scores (the Q-Former, BERT style). It only changes rounding in
    /// half precision; the fused f32 kernel scales the scores.
    pub scale_queries: bool,
    /// OPT's causal mask ([`fused::visible_keys`]).
    pub causal: bool,
    /// The base model's attention dropout, applied when the mode asks for base dropout.
    pub dropout: f64,
}

/// Multi-head attention on separate projections q [b, tq, d], k and v [b, tk, d] (the Q-Former's,
/// OPT's without a KV cache): `dropout(softmax(scale · q kᵀ + causal)) v` with the heads
/// concatenated, [b, tq, d]. On CPU in f32 it is one [`fused::Attention`] (keeps the probabilities
/// and a byte mask only); elsewhere candle's composition.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: AttentionSpec, mode: Mode) -> Result<Tensor> {
    let (b, tq, _) = q.dims3()?;
    let tk = k.dim(1)?;
    let AttentionSpec { heads, scale, causal, dropout, .. } = spec;
    if cpu_f32([q, k, v]) {
        let mask = mode.base_p(dropout).map(|p| fused::dropout::bytes(b * heads * tq * tk, p));
        let op = fused::Attention(fused::AttentionCore::new(heads, scale as f32, causal, mask));
        return apply3(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, op, mode);
    }
    attention_composed(q, k, v, spec, mode)
}

/// [`attention`] as candle ops (other devices and dtypes).
fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, spec: AttentionSpec, mode: Mode) -> Result<Tensor> {
    let (b, tq, d) = q.dims3()?;
    let tk = k.dim(1)?;
    let AttentionSpec { heads, scale, scale_queries, causal, dropout } = spec;
    if causal {
        fused::check_causal(tq, tk)?;
    }
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, heads, d / heads))?.transpose(1, 2)?.contiguous()
    };
    let mut scores = if scale_queries {
        (split(q)? * scale)?.matmul(&split(k)?.t()?)?
    } else {
        (split(q)?.matmul(&split(k)?.t()?)? * scale)?
    };
    if causal {
        scores = scores.broadcast_add(&causal_mask(tq, tk - tq, scores.dtype(), scores.device())?)?;
    }
    let probs = base_dropout(&softmax_last_dim(&scores, mode)?, dropout, mode)?;
    probs.matmul(&split(v)?)?.transpose(1, 2)?.reshape((b, tq, d))
}

/// Additive causal mask [1, 1, t, past + t]: 0 where [`fused::visible_keys`] allows, -inf elsewhere.
pub fn causal_mask(t: usize, past: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let s = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j >= fused::visible_keys(i, t, s) { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (1, 1, t, s), device)?.to_dtype(dtype)
}

/// `x @ wᵀ` outside the fused CPU path (see [`linear`]).
fn frozen_matmul(x: &Tensor, w: &Tensor, mode: Mode) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inner, lead) = dims.split_last().expect("rank >= 1");
    let rows: usize = lead.iter().product();
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dim(0)?);
    if w.track_op() {
        // The weight is trainable (full training): the ordinary matmul backward serves both.
        return x.reshape((rows, *inner))?.matmul(&w.t()?)?.reshape(out_dims);
    }
    let y = x.detach().reshape((rows, *inner))?.matmul(&w.t()?)?.reshape(out_dims)?;
    if mode.is_train() && x.track_op() {
        x.apply_op2(&y, fused::GradToInputOnly { w: w.clone() })
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Differentiable kernels, no dropout: a training forward the parity tests can compare.
    const TRAIN_NO_DROPOUT: Mode = Mode::Train(TrainFlags { lora_dropout: false, base_dropout: false });
    use candle_core::{Device, Var};

    #[test]
    fn linear_matches_matmul_and_gives_input_gradient_only() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[[1f32, 2., 3.], [4., 5., 6.]]], &dev)?; // [1, 2, 3]
        let w = Tensor::new(&[[1f32, 0., -1.], [0.5, 0.5, 0.5]], &dev)?; // [2, 3]
        let reference = x.as_tensor().broadcast_matmul(&w.t()?)?;
        // d/dx 0.5·|x wᵀ|² = (x wᵀ) w
        let expected = reference.broadcast_matmul(&w)?.to_vec3::<f32>()?;
        // The fused CPU path (f32) and the generic one (what other devices take).
        let paths: [(&str, &dyn Fn() -> Result<Tensor>); 2] = [
            ("fused", &|| linear(x.as_tensor(), &w, None, TRAIN_NO_DROPOUT)),
            ("generic", &|| frozen_matmul(x.as_tensor(), &w, TRAIN_NO_DROPOUT)),
        ];
        for (name, forward) in paths {
            let y = forward()?;
            assert_eq!(y.to_vec3::<f32>()?, reference.to_vec3::<f32>()?, "{name}");
            let grads = (y.sqr()?.sum_all()? * 0.5)?.backward()?;
            let gx = grads.get(x.as_tensor()).expect("x has a gradient").to_vec3::<f32>()?;
            assert_eq!(gx, expected, "{name}");
            assert!(grads.get(&w).is_none(), "{name}: the frozen weight must get no gradient buffer");
        }
        Ok(())
    }

    #[test]
    fn a_variable_weight_gets_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[1f32, 2., 3.], [4., 5., 6.]]], &dev)?;
        let w = Var::new(&[[1f32, 0., -1.], [0.5, 0.5, 0.5]], &dev)?;
        let y = linear(&x, w.as_tensor(), None, TRAIN_NO_DROPOUT)?;
        let grads = (y.sqr()?.sum_all()? * 0.5)?.backward()?;
        // d/dw 0.5·|x wᵀ|² = (x wᵀ)ᵀ x, summed over the rows
        let x2 = x.reshape((2, 3))?;
        let expected = x2.matmul(&w.as_tensor().t()?)?.t()?.matmul(&x2)?.to_vec2::<f32>()?;
        assert_eq!(grads.get(w.as_tensor()).expect("w has a gradient").to_vec2::<f32>()?, expected);
        Ok(())
    }

    #[test]
    fn fused_attention_matches_the_composition_other_devices_take() -> Result<()> {
        let dev = Device::Cpu;
        let mode = TRAIN_NO_DROPOUT;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar() };
        // The ViT's: fused qkv [b, t, 3·heads·hd].
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, 3 * 4 * 3), &dev)?)?;
        let fused = qkv_attention(&qkv, 4, 0.4, mode)?;
        let composed = qkv_attention_composed(&qkv, 4, 0.4, mode)?;
        assert!(diff(&fused, &composed)? < 1e-5);
        let (gf, gc) = (fused.sqr()?.sum_all()?.backward()?, composed.sqr()?.sum_all()?.backward()?);
        assert!(diff(gf.get(&qkv).expect("fused"), gc.get(&qkv).expect("composed"))? < 1e-4);
        // OPT's after a "cache": causal with tk > tq.
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 8), &dev)?)?;
        let kv = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, 8), &dev)?)?;
        // With dropout: the same seed draws the same mask on both paths.
        let with_dropout = Mode::Train(TrainFlags { lora_dropout: false, base_dropout: true });
        for (scale_queries, mode) in [(false, mode), (true, mode), (false, with_dropout)] {
            let spec = AttentionSpec { heads: 2, scale: 0.5, scale_queries, causal: true, dropout: 0.3 };
            seed_dropout(7);
            let fused = attention(&q, &kv, &kv, spec, mode)?;
            seed_dropout(7);
            let composed = attention_composed(&q, &kv, &kv, spec, mode)?;
            assert!(diff(&fused, &composed)? < 1e-5, "{spec:?} {mode:?}");
            let (gf, gc) = (fused.sqr()?.sum_all()?.backward()?, composed.sqr()?.sum_all()?.backward()?);
            for x in [&q, &kv] {
                assert!(diff(gf.get(x).expect("fused"), gc.get(x).expect("composed"))? < 1e-4, "{spec:?} {mode:?}");
            }
        }
        let spec = AttentionSpec { heads: 2, scale: 0.5, scale_queries: true, causal: true, dropout: 0.0 };
        let err = attention_composed(&kv, &q, &q, spec, mode).unwrap_err().to_string();
        assert!(err.contains("at least as many keys"), "{err}");
        Ok(())
    }

    /// The fused blocks against the compositions other devices take, with seeded dropout.
    #[test]
    fn fused_blocks_match_their_compositions_with_dropout() -> Result<()> {
        let dev = Device::Cpu;
        let mode = Mode::Train(TrainFlags { lora_dropout: true, base_dropout: true });
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar() };
        let linear = |i: usize, o: usize| -> Result<(Tensor, Tensor)> {
            Ok((Tensor::randn(0f32, 0.3, (o, i), &dev)?, Tensor::randn(0f32, 0.3, o, &dev)?))
        };
        let ((w1, b1), (w2, b2), (wp, bp)) = (linear(6, 10)?, linear(10, 6)?, linear(4, 6)?);
        fn params<'a>(w: &'a Tensor, b: &'a Tensor) -> LinearParams<'a> {
            LinearParams { weight: w, bias: Some(b), lora: None }
        }
        let (fc1, fc2, proj) = (params(&w1, &b1), params(&w2, &b2), params(&wp, &bp));
        let (lw, lb) = (Tensor::randn(1f32, 0.2, 6, &dev)?, Tensor::randn(0f32, 0.2, 6, &dev)?);
        let ln = NormParams { weight: &lw, bias: &lb, eps: 1e-5 };
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 6), &dev)?)?;
        let ctx = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 4), &dev)?)?;
        type Path<'a> = &'a dyn Fn() -> Result<Tensor>;
        let fused_mlp: Path = &|| pre_norm_mlp_block(&x, ln, (fc1, Activation::Relu, fc2), 0.3, mode);
        let composed_mlp: Path = &|| {
            let h = fc2.forward(&fc1.forward(&ln.forward(&x, mode)?, mode)?.relu()?, mode)?;
            x.as_tensor() + base_dropout(&h, 0.3, mode)?
        };
        let fused_proj: Path = &|| residual_linear(&ctx, proj, &x, 0.3, mode);
        let composed_proj: Path = &|| x.as_tensor() + base_dropout(&proj.forward(&ctx, mode)?, 0.3, mode)?;
        for (name, fused, composed) in
            [("mlp block", fused_mlp, composed_mlp), ("residual linear", fused_proj, composed_proj)]
        {
            seed_dropout(3);
            let yf = fused()?;
            seed_dropout(3);
            let yc = composed()?;
            assert!(diff(&yf, &yc)? < 1e-5, "{name}: forward differs by {}", diff(&yf, &yc)?);
            let (gf, gc) = (yf.sqr()?.sum_all()?.backward()?, yc.sqr()?.sum_all()?.backward()?);
            for v in [&x, &ctx] {
                match (gf.get(v), gc.get(v)) {
                    (Some(a), Some(b)) => assert!(diff(a, b)? < 1e-4, "{name}: gradient differs by {}", diff(a, b)?),
                    (a, b) => assert_eq!(a.is_some(), b.is_some(), "{name}: gradient presence"),
                }
            }
        }
        Ok(())
    }

    #[test]
    fn train_kernels_match_fused_kernels() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3., (2, 5, 16), &dev)?;
        let (w, b) = (Tensor::randn(1f32, 0.1, 16, &dev)?, Tensor::randn(0f32, 0.1, 16, &dev)?);
        let train = TRAIN_NO_DROPOUT;
        let d = (softmax_last_dim(&x, train)? - softmax_last_dim(&x, Mode::Inference)?)?.abs()?.max_all()?;
        assert!(d.to_scalar::<f32>()? < 1e-6);
        let d = (layer_norm(&x, &w, &b, 1e-6, train)? - layer_norm(&x, &w, &b, 1e-6, Mode::Inference)?)?
            .abs()?
            .max_all()?;
        assert!(d.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }
}
