//! `Blip2VisionModel` (EVA ViT-g in blip2-opt-2.7b): patch + class + position embeddings, pre-LN
//! encoder layers with a fused `qkv` (bias = q_bias ‖ 0 ‖ v_bias), erf-GELU MLP, `post_layernorm`.
//! Weight names are HF's, under `vision_model.`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VisionConfig;
use super::layer_norm::LayerNorm;
use super::linear::Linear;
use super::ops::{self, Mode};

/// `Blip2VisionEmbeddings`. The patch convolution (kernel = stride = patch) is computed as one GEMM
/// over flattened patches.
#[derive(Clone, Debug)]
pub struct Embeddings {
    prefix: String,
    pub class_embedding: Tensor,
    pub position_embedding: Tensor,
    pub patch_weight: Tensor,
    pub patch_bias: Tensor,
    patch_size: usize,
}

impl Embeddings {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        let n = (cfg.image_size / p).pow(2) + 1;
        let pe = vb.pp("patch_embedding");
        Ok(Embeddings {
            prefix: vb.prefix(),
            class_embedding: vb.get((1, 1, d), "class_embedding")?,
            position_embedding: vb.get((1, n, d), "position_embedding")?,
            patch_weight: pe.get((d, 3, p, p), "weight")?,
            patch_bias: pe.get(d, "bias")?,
            patch_size: p,
        })
    }

    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let p = &self.prefix;
        vec![
            (format!("{p}.class_embedding"), &mut self.class_embedding),
            (format!("{p}.position_embedding"), &mut self.position_embedding),
            (format!("{p}.patch_embedding.weight"), &mut self.patch_weight),
            (format!("{p}.patch_embedding.bias"), &mut self.patch_bias),
        ]
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let d = self.patch_weight.dim(0)?;
        let w = self.patch_weight.reshape((d, c * p * p))?;
        let x = patches.matmul(&w.t()?)?.broadcast_add(&self.patch_bias)?.reshape((b, gh * gw, d))?;
        let cls = self.class_embedding.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        x.broadcast_add(&self.position_embedding.narrow(1, 0, gh * gw + 1)?)
    }
}

/// `Blip2Attention`.
#[derive(Clone, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub projection: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let mut qkv = Linear::new(vb.pp("qkv"), d, 3 * d, false)?;
        // HF stores the assembled bias (q_bias ‖ zeros ‖ v_bias) as `qkv.bias`; older exports keep
        // `q_bias`/`v_bias` separately.
        if vb.contains_tensor("qkv.bias") {
            qkv.bias = Some(vb.get(3 * d, "qkv.bias")?);
        } else if cfg.qkv_bias {
            let q = vb.get(d, "q_bias")?;
            let v = vb.get(d, "v_bias")?;
            qkv.bias = Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?);
        }
        let heads = cfg.num_attention_heads;
        Ok(Attention {
            qkv,
            projection: Linear::new(vb.pp("projection"), d, d, true)?,
            heads,
            scale: ((d / heads) as f64).powf(-0.5),
        })
    }

    /// `residual + projection(attention(x))`: the attention with its output projection and the
    /// layer's residual connection.
    pub fn forward(&self, x: &Tensor, residual: &Tensor, mode: Mode) -> Result<Tensor> {
        let context = ops::qkv_attention(&self.qkv.forward(x, mode)?, self.heads, self.scale, mode)?;
        self.projection.residual_forward(&context, residual, 0.0, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.qkv.named(), self.projection.named()].into_iter().flatten().collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.qkv, &mut self.projection]
    }
}

/// `Blip2MLP`.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(vb.pp("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::new(vb.pp("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
        })
    }

    /// `h + mlp(ln(h))`: the MLP behind its pre-LN and with the residual connection, as one block
    /// ([`ops::pre_norm_mlp_block`]).
    pub fn forward(&self, h: &Tensor, ln: &LayerNorm, mode: Mode) -> Result<Tensor> {
        let mlp = (self.fc1.params(), ops::Activation::Gelu, self.fc2.params());
        ops::pre_norm_mlp_block(h, ln.params(), mlp, 0.0, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.fc1.named(), self.fc2.named()].into_iter().flatten().collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        vec![&mut self.fc1, &mut self.fc2]
    }
}

/// `Blip2EncoderLayer`.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    pub self_attn: Attention,
    pub layer_norm1: LayerNorm,
    pub mlp: Mlp,
    pub layer_norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        Ok(EncoderLayer {
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), cfg.hidden_size, cfg.layer_norm_eps)?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        // x + projection(attention(layer_norm1(x))), then h + mlp(layer_norm2(h)).
        let h = self.self_attn.forward(&self.layer_norm1.forward(x, mode)?, x, mode)?;
        self.mlp.forward(&h, &self.layer_norm2, mode)
    }

    /// `(name, tensor)` of its parameters, in the order of HF's `named_parameters()`.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        [self.self_attn.named(), self.layer_norm1.named(), self.mlp.named(), self.layer_norm2.named()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Its linear layers, in the same order.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        [self.self_attn.linears_mut(), self.mlp.linears_mut()].into_iter().flatten().collect()
    }
}

/// `Blip2VisionModel`.
#[derive(Clone, Debug)]
pub struct VisionModel {
    pub embeddings: Embeddings,
    pub layers: Vec<EncoderLayer>,
    pub post_layernorm: LayerNorm,
}

impl VisionModel {
    pub fn new(vb: VarBuilder, cfg: &VisionConfig) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder.layers").pp(i), cfg))
            .collect::<Result<_>>()?;
        Ok(VisionModel {
            embeddings: Embeddings::new(vb.pp("embeddings"), cfg)?,
            layers,
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }

    /// `last_hidden_state` (post-layernormed), [B, patches + 1, hidden].
    pub fn forward(&self, pixel_values: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            x = layer.forward(&x, mode)?;
        }
        self.post_layernorm.forward(&x, mode)
    }

    /// Every parameter with its HF name.
    pub fn named(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = self.embeddings.named();
        for l in &mut self.layers {
            v.extend(l.named());
        }
        v.extend(self.post_layernorm.named());
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers.iter_mut().flat_map(EncoderLayer::linears_mut).collect()
    }
}
