//! `nn.LayerNorm` (weight + bias), kernel chosen by [`super::ops`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::ops::{self, Mode};

#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// The HF module path.
    pub name: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm { name: vb.prefix(), weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps })
    }

    /// Its parameters as the kernels take them.
    pub fn params(&self) -> ops::NormParams<'_> {
        ops::NormParams { weight: &self.weight, bias: &self.bias, eps: self.eps }
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.params().forward(x, mode)
    }

    /// `(name, tensor)` of its parameters.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![(format!("{}.weight", self.name), &mut self.weight), (format!("{}.bias", self.name), &mut self.bias)]
    }
}
