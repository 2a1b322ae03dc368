//! `Blip2QFormerModel`: the query tokens, layer-normed, go through BERT-like layers with
//! self-attention every layer and cross-attention to the image every `cross_attention_frequency`
//! layers, then the query feed-forward (`intermediate_query` / `output_query`). Only the query path
//! exists (BLIP-2 generation feeds no text to the Q-Former). Weight names are HF's, under `qformer.`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::QFormerConfig;
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::ops::{self, Mode};

/// `Blip2QFormerMultiHeadAttention` (self- or cross-attention).
#[derive(Clone, Debug)]
pub struct MultiHeadAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    heads: usize,
    dropout: f64,
}

impl MultiHeadAttention {
    pub fn new(vb: VarBuilder, cfg: &QFormerConfig, is_cross: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        let kv_in = if is_cross { cfg.encoder_hidden_size } else { d };
        Ok(MultiHeadAttention {
            query: Linear::new(vb.pp("query"), d, d, true)?,
            key: Linear::new(vb.pp("key"), kv_in, d, true)?,
            value: Linear::new(vb.pp("value"), kv_in, d, true)?,
            heads: cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// `kv_source` is the image embeddings for cross-attention, `x` itself for self-attention.
    pub fn forward(&self, x: &Tensor, kv_source: &Tensor, mode: Mode) -> Result<Tensor> {
        let q = self.query.forward(x, mode)?;
        let k = self.key.forward(kv_source, mode)?;
        let v = self.value.forward(kv_source, mode)?;
        // HF divides the scores by sqrt(head_dim) (BERT style).
        let scale = ((x.dim(2)? / self.heads) as f64).powf(-0.5);
        let spec =
            ops::AttentionSpec { heads: self.heads, scale, scale_queries: false, causal: false, dropout: self.dropout };
        ops::attention(&q, &k, &v, spec, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.query.named(), self.key.named(), self.value.named()].into_iter().flatten().collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.query, &mut self.key, &mut self.value]
    }
}

/// `Blip2QFormerSelfOutput` / `Blip2QFormerOutput`: dense → dropout → LayerNorm(h + residual).
#[derive(Clone, Debug)]
pub struct ResidualOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    dropout: f64,
}

impl ResidualOutput {
    pub fn new(vb: VarBuilder, in_dim: usize, cfg: &QFormerConfig) -> Result<Self> {
        Ok(ResidualOutput {
            dense: Linear::new(vb.pp("dense"), in_dim, cfg.hidden_size, true)?,
            layer_norm: LayerNorm::new(vb.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    pub fn forward(&self, h: &Tensor, residual: &Tensor, mode: Mode) -> Result<Tensor> {
        self.layer_norm.forward(&self.dense.residual_forward(h, residual, self.dropout, mode)?, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.dense.named(), self.layer_norm.named()].into_iter().flatten().collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.dense]
    }
}

/// `Blip2QFormerAttention`: attention + residual output.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    pub attention: MultiHeadAttention,
    pub output: ResidualOutput,
}

impl AttentionBlock {
    pub fn new(vb: VarBuilder, cfg: &QFormerConfig, is_cross: bool) -> Result<Self> {
        Ok(AttentionBlock {
            attention: MultiHeadAttention::new(vb.pp("attention"), cfg, is_cross)?,
            output: ResidualOutput::new(vb.pp("output"), cfg.hidden_size, cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, kv_source: &Tensor, mode: Mode) -> Result<Tensor> {
        let a = self.attention.forward(x, kv_source, mode)?;
        self.output.forward(&a, x, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.attention.named(), self.output.named()].into_iter().flatten().collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        [self.attention.linears_mut(), self.output.linears_mut()].into_iter().flatten().collect()
    }
}

/// `Blip2QFormerLayer` (query path).
#[derive(Clone, Debug)]
pub struct Layer {
    pub attention: AttentionBlock,
    pub crossattention: Option<AttentionBlock>,
    pub intermediate_query: Linear,
    pub output_query: ResidualOutput,
}

impl Layer {
    pub fn new(vb: VarBuilder, cfg: &QFormerConfig, index: usize) -> Result<Self> {
        let crossattention = if index.is_multiple_of(cfg.cross_attention_frequency) {
            Some(AttentionBlock::new(vb.pp("crossattention"), cfg, true)?)
        } else {
            None
        };
        Ok(Layer {
            attention: AttentionBlock::new(vb.pp("attention"), cfg, false)?,
            crossattention,
            intermediate_query: Linear::new(
                vb.pp("intermediate_query.dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
                true,
            )?,
            output_query: ResidualOutput::new(vb.pp("output_query"), cfg.intermediate_size, cfg)?,
        })
    }

    pub fn forward(&self, x: &Tensor, image_embeds: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = self.attention.forward(x, x, mode)?;
        if let Some(cross) = &self.crossattention {
            h = cross.forward(&h, image_embeds, mode)?;
        }
        let inter = ops::gelu(&self.intermediate_query.forward(&h, mode)?, mode)?;
        self.output_query.forward(&inter, &h, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = self.attention.named();
        if let Some(c) = self.crossattention.as_mut() {
            v.extend(c.named());
        }
        v.extend(self.intermediate_query.named());
        v.extend(self.output_query.named());
        v
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.attention.linears_mut();
        if let Some(c) = self.crossattention.as_mut() {
            v.extend(c.linears_mut());
        }
        v.push(&mut self.intermediate_query);
        v.extend(self.output_query.linears_mut());
        v
    }
}

/// `Blip2QFormerModel`.
#[derive(Clone, Debug)]
pub struct QFormerModel {
    pub layernorm: LayerNorm,
    pub layers: Vec<Layer>,
    dropout: f64,
}

impl QFormerModel {
    pub fn new(vb: VarBuilder, cfg: &QFormerConfig) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp("encoder.layer").pp(i), cfg, i))
            .collect::<Result<_>>()?;
        Ok(QFormerModel {
            layernorm: LayerNorm::new(vb.pp("layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            layers,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `last_hidden_state` for `query_embeds` [B, Q, hidden] attending to `image_embeds`.
    pub fn forward(&self, query_embeds: &Tensor, image_embeds: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = ops::base_dropout(&self.layernorm.forward(query_embeds, mode)?, self.dropout, mode)?;
        for layer in &self.layers {
            x = layer.forward(&x, image_embeds, mode)?;
        }
        Ok(x)
    }

    /// Every parameter with its HF name.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = self.layernorm.named();
        for l in &mut self.layers {
            v.extend(l.named());
        }
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers.iter_mut().flat_map(Layer::linears_mut).collect()
    }
}
