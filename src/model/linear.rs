//! `nn.Linear` with an optional PEFT LoRA branch, named by its HF module path.
//!
//! `y = x Wᵀ + b + (alpha/r) · B(A(dropout(x)))`, the LoRA branch computed in the adapter's dtype
//! (f32) and added in the base dtype, as PEFT 0.6 does. A LoRA can also be merged into `W`
//! (`W += (alpha/r)·B·A`, in f32, then cast), which is what inference uses by default.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::lora::LoraBranch;
use super::ops::{self, Mode};

/// A linear layer of the base model.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The HF module path, e.g. `language_model.model.decoder.layers.0.self_attn.q_proj`.
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// An unmerged LoRA branch.
    pub lora: Option<LoraBranch>,
    /// Set when a LoRA was merged into `weight` (so it can be told apart from the base weights).
    pub merged: bool,
}

impl Linear {
    /// Loads `weight` [out, in] and, when `bias`, `bias` \[out\] under `vb`.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Linear { name: vb.prefix(), weight, bias, lora: None, merged: false })
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Its parameters as the kernels take them.
    pub fn params(&self) -> ops::LinearParams<'_> {
        ops::LinearParams { weight: &self.weight, bias: self.bias.as_ref(), lora: self.lora.as_ref() }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.params().forward(x, mode)
    }

    /// `residual + dropout(self(x))`: an output projection with its residual connection
    /// ([`ops::residual_linear`]).
    pub fn residual_forward(&self, x: &Tensor, residual: &Tensor, dropout: f64, mode: Mode) -> Result<Tensor> {
        ops::residual_linear(x, self.params(), residual, dropout, mode)
    }

    /// `(name, tensor)` of its base parameters.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = vec![(format!("{}.weight", self.name), &mut self.weight)];
        if let Some(b) = self.bias.as_mut() {
            v.push((format!("{}.bias", self.name), b));
        }
        v
    }

    /// Folds the LoRA branch into the weight (PEFT's `merge`).
    pub fn merge_lora(&mut self) -> Result<()> {
        if let Some(l) = self.lora.take() {
            self.weight = merged_weight(&self.weight, &l)?;
            self.merged = true;
        }
        Ok(())
    }
}

/// `weight + scale · B · A`, computed in f32 and cast back to `weight`'s dtype.
pub fn merged_weight(weight: &Tensor, lora: &LoraBranch) -> Result<Tensor> {
    (weight.to_dtype(DType::F32)? + lora.delta_weight()?)?.to_dtype(weight.dtype())
}
