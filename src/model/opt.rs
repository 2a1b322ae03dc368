//! `OPTForCausalLM` (transformers 4.35): learned positions with offset 2, pre-LN decoder layers,
//! ReLU MLP, final LayerNorm, `lm_head` tied to `embed_tokens` when the file has none; with a
//! per-layer KV cache for generation. Weight names are HF's, under `language_model.`.
//!
//! Positions are `past_len + index + 2`, which is what OPT computes from an all-ones attention mask;
//! BLIP-2 always builds one (query slots and prompt are never padded), so no mask is taken.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::OptConfig;
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::ops::{self, Mode};

/// OPT's position offset (`OPTLearnedPositionalEmbedding.offset`).
pub const POSITION_OFFSET: usize = 2;

/// Keys and values of every layer, [B, heads, past, head_dim] each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![None; layers] }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s rows after this cache's, left-padding the shorter side's positions with
    /// zeros so that both have the longer length (the padding is masked by [`OptForCausalLM::forward_step`]).
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if self.is_empty() {
            *self = other;
            return Ok(());
        }
        let (t_self, t_other) = (self.len(), other.len());
        let t = t_self.max(t_other);
        let pad = |x: &Tensor, have: usize| -> Result<Tensor> {
            if have == t {
                return Ok(x.clone());
            }
            let (b, h, _, d) = x.dims4()?;
            Tensor::cat(&[&Tensor::zeros((b, h, t - have, d), x.dtype(), x.device())?, x], 2)
        };
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            let (Some((k, v)), Some((ok, ov))) = (mine.as_ref(), theirs) else {
                candle_core::bail!("appending an incomplete cache");
            };
            let k = Tensor::cat(&[&pad(k, t_self)?, &pad(&ok, t_other)?], 0)?;
            let v = Tensor::cat(&[&pad(v, t_self)?, &pad(&ov, t_other)?], 0)?;
            *mine = Some((k, v));
        }
        Ok(())
    }

    /// Drops the first `n` cached positions of every row (padding no row needs any more).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let t = self.len();
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, n, t - n)?.contiguous()?;
            *v = v.narrow(2, n, t - n)?.contiguous()?;
        }
        Ok(())
    }

    /// Keeps only the batch rows `rows` (finished sequences leave the batch).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// `OPTAttention`.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    heads: usize,
    scaling: f64,
    dropout: f64,
}

impl Attention {
    pub fn new(vb: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let bias = cfg.enable_bias;
        Ok(Attention {
            q_proj: Linear::new(vb.pp("q_proj"), d, d, bias)?,
            k_proj: Linear::new(vb.pp("k_proj"), d, d, bias)?,
            v_proj: Linear::new(vb.pp("v_proj"), d, d, bias)?,
            out_proj: Linear::new(vb.pp("out_proj"), d, d, bias)?,
            heads: cfg.num_attention_heads,
            scaling: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
            dropout: cfg.attention_dropout,
        })
    }

    fn shape(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.heads, d / self.heads))?.transpose(1, 2)?.contiguous()
    }

    /// `residual + dropout(out_proj(attention(x)))` with the layer's hidden dropout; appends to
    /// `cache` when given.
    pub fn forward(
        &self,
        x: &Tensor,
        residual: &Tensor,
        causal_mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        hidden_dropout: f64,
        mode: Mode,
    ) -> Result<Tensor> {
        let context = self.context(x, causal_mask, cache, mode)?;
        self.out_proj.residual_forward(&context, residual, hidden_dropout, mode)
    }

    /// The heads' concatenated context [B, T, D], before `out_proj`.
    fn context(
        &self,
        x: &Tensor,
        causal_mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let Some(cache) = cache else {
            // Training (and any forward without a cache): one attention op on the projections.
            let (q, k, v) =
                (self.q_proj.forward(x, mode)?, self.k_proj.forward(x, mode)?, self.v_proj.forward(x, mode)?);
            let spec = ops::AttentionSpec {
                heads: self.heads,
                scale: self.scaling,
                scale_queries: true,
                causal: causal_mask.is_some(),
                dropout: self.dropout,
            };
            return ops::attention(&q, &k, &v, spec, mode);
        };
        let q = self.shape(&(self.q_proj.forward(x, mode)? * self.scaling)?)?;
        let mut k = self.shape(&self.k_proj.forward(x, mode)?)?;
        let mut v = self.shape(&self.v_proj.forward(x, mode)?)?;
        if let Some((pk, pv)) = cache.as_ref() {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        *cache = Some((k.clone(), v.clone()));
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = causal_mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = ops::base_dropout(&ops::softmax_last_dim(&scores, mode)?, self.dropout, mode)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.q_proj.named(), self.k_proj.named(), self.v_proj.named(), self.out_proj.named()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.out_proj]
    }
}

/// `OPTDecoderLayer` (pre-LN).
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub self_attn_layer_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: LayerNorm,
    dropout: f64,
}

impl DecoderLayer {
    pub fn new(vb: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(DecoderLayer {
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            self_attn_layer_norm: LayerNorm::new(vb.pp("self_attn_layer_norm"), d, 1e-5)?,
            fc1: Linear::new(vb.pp("fc1"), d, cfg.ffn_dim, cfg.enable_bias)?,
            fc2: Linear::new(vb.pp("fc2"), cfg.ffn_dim, d, cfg.enable_bias)?,
            final_layer_norm: LayerNorm::new(vb.pp("final_layer_norm"), d, 1e-5)?,
            dropout: cfg.dropout,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> Result<Tensor> {
        // x + dropout(out_proj(attention(ln(x)))), then h + dropout(fc2(relu(fc1(ln(h))))).
        let h =
            self.self_attn.forward(&self.self_attn_layer_norm.forward(x, mode)?, x, mask, cache, self.dropout, mode)?;
        let mlp = (self.fc1.params(), ops::Activation::Relu, self.fc2.params());
        ops::pre_norm_mlp_block(&h, self.final_layer_norm.params(), mlp, self.dropout, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [
            self.self_attn.named(),
            self.self_attn_layer_norm.named(),
            self.fc1.named(),
            self.fc2.named(),
            self.final_layer_norm.named(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.self_attn.linears_mut();
        v.extend([&mut self.fc1, &mut self.fc2]);
        v
    }
}

/// `OPTForCausalLM`.
#[derive(Clone, Debug)]
pub struct OptForCausalLM {
    prefix: String,
    /// Whether `lm_head` is `embed_tokens` (tied; absent from the file).
    pub tied: bool,
    pub embed_tokens: Tensor,
    pub embed_positions: Tensor,
    pub project_in: Option<Linear>,
    pub project_out: Option<Linear>,
    pub layers: Vec<DecoderLayer>,
    pub final_layer_norm: Option<LayerNorm>,
    pub lm_head: Tensor,
}

impl OptForCausalLM {
    /// `vb` points at `language_model`.
    pub fn new(vb: VarBuilder, cfg: &OptConfig) -> Result<Self> {
        let dec = vb.pp("model.decoder");
        let d = cfg.hidden_size;
        let proj = cfg.word_embed_proj_dim.unwrap_or(d);
        let embed_tokens = dec.get((cfg.vocab_size, proj), "embed_tokens.weight")?;
        let embed_positions = dec.get((cfg.max_position_embeddings + POSITION_OFFSET, d), "embed_positions.weight")?;
        let (project_in, project_out) = if proj != d {
            (
                Some(Linear::new(dec.pp("project_in"), proj, d, false)?),
                Some(Linear::new(dec.pp("project_out"), d, proj, false)?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(LayerNorm::new(dec.pp("final_layer_norm"), d, 1e-5)?)
        } else {
            None
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(dec.pp("layers").pp(i), cfg))
            .collect::<Result<_>>()?;
        let tied = !vb.contains_tensor("lm_head.weight");
        let lm_head = if tied { embed_tokens.clone() } else { vb.get((cfg.vocab_size, proj), "lm_head.weight")? };
        Ok(OptForCausalLM {
            prefix: vb.prefix(),
            tied,
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
        })
    }

    /// Token embeddings of `ids` [B, L].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let d = self.embed_tokens.dim(1)?;
        self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, d))
    }

    /// Decoder hidden states (after the final LayerNorm / project_out) for `embeds` [B, T, D] that
    /// follow `cache.len()` cached positions; appends to the cache when given.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: Option<&mut KvCache>, mode: Mode) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let pos = self.embed_positions.narrow(0, past + POSITION_OFFSET, t)?.unsqueeze(0)?;
        let mask = if t > 1 { Some(ops::causal_mask(t, past, embeds.dtype(), embeds.device())?) } else { None };
        self.decode(embeds, &pos, mask.as_ref(), cache, mode)
    }

    /// project_in, + positions, the decoder layers (appending to `cache` when given) under the
    /// additive `mask`, the final LayerNorm and project_out.
    fn decode(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let mut x = match &self.project_in {
            Some(p) => p.forward(embeds, mode)?,
            None => embeds.clone(),
        };
        x = x.broadcast_add(&positions.to_dtype(x.dtype())?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, mask, layer_cache, mode)?;
        }
        if let Some(ln) = &self.final_layer_norm {
            x = ln.forward(&x, mode)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x, mode)?;
        }
        Ok(x)
    }

    /// One decoding step for rows at different positions (continuous batching): `embeds` [B, 1, D]
    /// of each row's last token, `positions[r]` its position (the row's real cached positions), and
    /// `padding[r]` the cached positions of row `r` that are left padding (hidden from its attention).
    /// Appends to `cache`; returns the hidden states [B, 1, D].
    pub fn forward_step(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        positions: &[u32],
        padding: &[usize],
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        if t != 1 || positions.len() != b || padding.len() != b {
            candle_core::bail!(
                "forward_step takes one token for each of {b} rows ({t} tokens, {} positions)",
                positions.len()
            );
        }
        let pos = if positions.iter().all(|&p| p == positions[0]) {
            // Rows in step (no one joined late): one position for all, as `forward_embeds`.
            self.embed_positions.narrow(0, positions[0] as usize + POSITION_OFFSET, 1)?
        } else {
            let ids: Vec<u32> = positions.iter().map(|&p| p + POSITION_OFFSET as u32).collect();
            self.embed_positions.index_select(&Tensor::new(ids, embeds.device())?, 0)?.unsqueeze(1)?
        };
        // The new token sees every cached position of its row but the padding, and itself.
        let keys = cache.len() + 1;
        let mask = if padding.iter().all(|&p| p == 0) {
            None
        } else {
            let mask: Vec<f32> = padding
                .iter()
                .flat_map(|&pad| (0..keys).map(move |j| if j < pad { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(mask, (b, 1, 1, keys), embeds.device())?.to_dtype(embeds.dtype())?)
        };
        self.decode(embeds, &pos, mask.as_ref(), Some(cache), mode)
    }

    /// `lm_head(hidden)`: logits [.., vocab].
    pub fn logits(&self, hidden: &Tensor, mode: Mode) -> Result<Tensor> {
        ops::linear(hidden, &self.lm_head, None, mode)
    }

    /// Every parameter with its HF name (`lm_head` only when it is not tied).
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let p = self.prefix.clone();
        let mut v = vec![
            (format!("{p}.model.decoder.embed_tokens.weight"), &mut self.embed_tokens),
            (format!("{p}.model.decoder.embed_positions.weight"), &mut self.embed_positions),
        ];
        for l in &mut self.layers {
            v.extend(l.named());
        }
        for lin in self.project_in.iter_mut().chain(self.project_out.iter_mut()) {
            v.extend(lin.named());
        }
        if let Some(ln) = self.final_layer_norm.as_mut() {
            v.extend(ln.named());
        }
        if !self.tied {
            v.push((format!("{p}.lm_head.weight"), &mut self.lm_head));
        }
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v: Vec<&mut Linear> = self.layers.iter_mut().flat_map(DecoderLayer::linears_mut).collect();
        v.extend(self.project_in.iter_mut());
        v.extend(self.project_out.iter_mut());
        v
    }
}
