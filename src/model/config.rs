//! Configs that deserialize the HF `config.json` of `Blip2ForConditionalGeneration` (transformers 4.35).
//!
//! `save_pretrained` writes only the values that differ from each class's defaults, so every field
//! defaults to the transformers 4.35 class default (`Blip2VisionConfig`, `Blip2QFormerConfig`,
//! `OPTConfig`, `Blip2Config`).

use serde::{Deserialize, Serialize};

fn d<T: From<u16>>(v: u16) -> T {
    T::from(v)
}

/// `Blip2VisionConfig`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct VisionConfig {
    #[serde(default = "vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "vision_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "vision_image")]
    pub image_size: usize,
    #[serde(default = "vision_patch")]
    pub patch_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps_1e6")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

/// `Blip2QFormerConfig`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct QFormerConfig {
    #[serde(default = "qf_hidden")]
    pub hidden_size: usize,
    #[serde(default = "qf_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "qf_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "qf_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps_1e12")]
    pub layer_norm_eps: f64,
    #[serde(default = "two")]
    pub cross_attention_frequency: usize,
    #[serde(default = "vision_hidden")]
    pub encoder_hidden_size: usize,
    #[serde(default = "dropout_01")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "dropout_01")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

/// `OPTConfig`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OptConfig {
    #[serde(default = "opt_vocab")]
    pub vocab_size: usize,
    #[serde(default = "qf_hidden")]
    pub hidden_size: usize,
    #[serde(default = "qf_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "qf_intermediate")]
    pub ffn_dim: usize,
    #[serde(default = "opt_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "qf_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default = "dropout_01")]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "one")]
    pub pad_token_id: u32,
    #[serde(default = "two")]
    pub bos_token_id: u32,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenId>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

/// `eos_token_id` may be one id or a list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EosTokenId {
    One(u32),
    Many(Vec<u32>),
}

/// `Blip2Config`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Blip2Config {
    #[serde(default = "empty_object")]
    pub vision_config: VisionConfig,
    #[serde(default = "empty_object")]
    pub qformer_config: QFormerConfig,
    #[serde(default = "empty_object")]
    pub text_config: OptConfig,
    #[serde(default = "query_tokens")]
    pub num_query_tokens: usize,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn empty_object<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_str("{}").expect("every field has a default")
}

impl Blip2Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Blip2Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let cfg: Blip2Config = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a Blip2 config: {e}", path.display()))?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Rejects configurations this implementation does not cover.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.model_type {
            anyhow::ensure!(t == "blip-2", "model_type is {t:?}, expected \"blip-2\"");
        }
        let v = &self.vision_config;
        anyhow::ensure!(
            v.hidden_size.is_multiple_of(v.num_attention_heads),
            "vision hidden_size not divisible by heads"
        );
        anyhow::ensure!(v.image_size.is_multiple_of(v.patch_size), "vision image_size not divisible by patch_size");
        let q = &self.qformer_config;
        anyhow::ensure!(
            q.hidden_size.is_multiple_of(q.num_attention_heads),
            "qformer hidden_size not divisible by heads"
        );
        anyhow::ensure!(q.cross_attention_frequency > 0, "qformer cross_attention_frequency must be > 0");
        anyhow::ensure!(
            q.position_embedding_type == "absolute",
            "qformer position_embedding_type {:?} is not supported (only \"absolute\")",
            q.position_embedding_type
        );
        let t = &self.text_config;
        anyhow::ensure!(t.hidden_size.is_multiple_of(t.num_attention_heads), "text hidden_size not divisible by heads");
        anyhow::ensure!(t.do_layer_norm_before, "only pre-LN OPT (do_layer_norm_before = true) is supported");
        anyhow::ensure!(t.layer_norm_elementwise_affine, "OPT layer norms without affine are not supported");
        for (name, act) in [("vision", &v.hidden_act), ("qformer", &q.hidden_act)] {
            anyhow::ensure!(act == "gelu", "{name} hidden_act {act:?} is not supported (only erf \"gelu\")");
        }
        anyhow::ensure!(
            t.activation_function == "relu",
            "OPT activation_function {:?} is not supported (only \"relu\")",
            t.activation_function
        );
        Ok(())
    }

    /// Ids that end a generated sequence (the text config's `eos_token_id`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match &self.text_config.eos_token_id {
            None => vec![2],
            Some(EosTokenId::One(i)) => vec![*i],
            Some(EosTokenId::Many(v)) => v.clone(),
        }
    }

    /// `config.json` as transformers writes it (every value explicit), for checkpoints we save.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("configs serialise");
        v["model_type"] = "blip-2".into();
        v["architectures"] = serde_json::json!(["Blip2ForConditionalGeneration"]);
        v["vision_config"]["model_type"] = "blip_2_vision_model".into();
        v["qformer_config"]["model_type"] = "blip_2_qformer".into();
        v["text_config"]["model_type"] = "opt".into();
        v["use_decoder_only_language_model"] = true.into();
        v
    }

    /// Positions the vision tower produces (patches + class token).
    pub fn vision_tokens(&self) -> usize {
        let v = &self.vision_config;
        (v.image_size / v.patch_size).pow(2) + 1
    }
}

fn vision_hidden() -> usize {
    1408
}
fn vision_intermediate() -> usize {
    6144
}
fn vision_layers() -> usize {
    39
}
fn vision_heads() -> usize {
    16
}
fn vision_image() -> usize {
    224
}
fn vision_patch() -> usize {
    14
}
fn qf_hidden() -> usize {
    768
}
fn qf_layers() -> usize {
    12
}
fn qf_heads() -> usize {
    12
}
fn qf_intermediate() -> usize {
    3072
}
fn opt_vocab() -> usize {
    50272
}
fn opt_positions() -> usize {
    2048
}
fn query_tokens() -> usize {
    32
}
fn one<T: From<u16>>() -> T {
    d(1)
}
fn two<T: From<u16>>() -> T {
    d(2)
}
fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".into()
}
fn relu() -> String {
    "relu".into()
}
fn absolute() -> String {
    "absolute".into()
}
fn eps_1e6() -> f64 {
    1e-6
}
fn eps_1e12() -> f64 {
    1e-12
}
fn dropout_01() -> f64 {
    0.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_blip2_opt_2_7b_shaped_defaults() {
        let c: Blip2Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.vision_config.hidden_size, 1408);
        assert_eq!(c.vision_config.num_hidden_layers, 39);
        assert_eq!(c.qformer_config.cross_attention_frequency, 2);
        assert_eq!(c.num_query_tokens, 32);
        assert_eq!(c.vision_tokens(), 257);
        c.validate().unwrap();
    }

    #[test]
    fn reads_the_real_blip2_opt_2_7b_text_config() {
        let c: Blip2Config = serde_json::from_str(
            r#"{"model_type":"blip-2","num_query_tokens":32,
                "text_config":{"hidden_size":2560,"ffn_dim":10240,"num_hidden_layers":32,"num_attention_heads":32,
                 "eos_token_id":50118,"word_embed_proj_dim":2560,"model_type":"opt"},
                "vision_config":{"model_type":"blip_2_vision_model"},"qformer_config":{}}"#,
        )
        .unwrap();
        assert_eq!(c.eos_token_ids(), vec![50118]);
        assert_eq!(c.text_config.hidden_size, 2560);
        c.validate().unwrap();
    }
}
