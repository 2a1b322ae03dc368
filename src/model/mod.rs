//! The BLIP2IDC model (BLIP-2, OPT variant, with PEFT LoRA adapters) in candle.
//!
//! One file per HF module family, HF weight names kept 1:1: [`vision`] (`Blip2VisionModel`),
//! [`qformer`] (`Blip2QFormerModel`), [`opt`] (`OPTForCausalLM`), [`blip2`]
//! (`Blip2ForConditionalGeneration`); [`lora`] reads and writes PEFT adapters; [`preprocess`] is the
//! pair input; [`ops`] is the single place that picks kernels. [`Blip2Idc`] bundles model, tokenizer
//! and preprocessing for captioning.

pub mod blas;
pub mod blip2;
pub mod config;
pub mod engine;
pub mod fused;
pub mod layer_norm;
pub mod linear;
pub mod loader;
pub mod lora;
pub mod ops;
pub mod opt;
pub mod preprocess;
pub mod qformer;
pub mod vision;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};

use blip2::Blip2Model;
use config::Blip2Config;
use loader::CheckpointFiles;
use lora::Adapter;
use preprocess::ImageProcessorConfig;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Checkpoint directory or hub id.
    pub checkpoint: String,
    /// PEFT adapter directory.
    pub adapter: Option<PathBuf>,
    pub dtype: DType,
    pub device: Device,
    /// Merge the adapter into the base weights (faster inference; same outputs).
    pub merge_adapter: bool,
}

/// Generation length when none is configured: the authors' setting.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 77;

/// One generated caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub caption: String,
    /// Tokens generated after the bos prompt, up to (excluding) the first eos.
    pub token_ids: Vec<u32>,
}

/// Model + tokenizer + preprocessing.
pub struct Blip2Idc {
    pub model: Blip2Model,
    pub tokenizer: tokenizers::Tokenizer,
    pub processor: ImageProcessorConfig,
    pub eos_token_ids: Vec<u32>,
    /// transformers' `clean_up_tokenization_spaces` (on unless `tokenizer_config.json` turns it off).
    pub clean_up_tokenization_spaces: bool,
    pub files: CheckpointFiles,
    pub adapter: Option<Adapter>,
    /// Names of the modules the adapter adapted.
    pub adapted_modules: Vec<String>,
}

impl Blip2Idc {
    pub fn load(opts: &LoadOptions) -> anyhow::Result<Blip2Idc> {
        let files = loader::resolve(&opts.checkpoint)?;
        let config = Blip2Config::from_file(&files.config)?;
        let processor = match &files.preprocessor {
            Some(p) => ImageProcessorConfig::from_file(p, config.vision_config.image_size as u32)?,
            None => ImageProcessorConfig::for_image_size(config.vision_config.image_size as u32),
        };
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", files.tokenizer.display()))?;
        let vb = weights::ShardReader::var_builder(&files.weights, opts.dtype, &opts.device)?;
        let mut model =
            Blip2Model::new(vb, &config).with_context(|| format!("loading the weights of {}", files.source))?;
        let (adapter, adapted_modules) = match &opts.adapter {
            None => (None, Vec::new()),
            Some(dir) => {
                let shapes = model.linear_shapes();
                let adapter = Adapter::load(dir, &opts.device, &shapes)
                    .with_context(|| format!("loading the adapter {}", dir.display()))?;
                let adapted = model
                    .apply_adapter(&adapter, opts.merge_adapter)
                    .with_context(|| format!("applying the adapter {}", dir.display()))?;
                (Some(adapter), adapted)
            }
        };
        if files.random_weights {
            tracing::warn!(checkpoint = %files.source, "THIS CHECKPOINT HAS RANDOM WEIGHTS: its captions are gibberish (a test/quickstart model)");
        }
        let eos_token_ids = config.eos_token_ids();
        let clean_up_tokenization_spaces = match &files.tokenizer_config {
            None => true,
            Some(p) => {
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)
                    .with_context(|| format!("{} is not JSON", p.display()))?;
                v.get("clean_up_tokenization_spaces").and_then(|b| b.as_bool()).unwrap_or(true)
            }
        };
        Ok(Blip2Idc {
            model,
            tokenizer,
            processor,
            eos_token_ids,
            clean_up_tokenization_spaces,
            files,
            adapter,
            adapted_modules,
        })
    }

    /// Replaces the adapter in place (hot swap): the linears the old adapter touched get their base
    /// weights back from the checkpoint files, then the new adapter is attached (merged when `merge`).
    /// Needs no second copy of the model, only of the adapted linears.
    ///
    /// Atomic: every new weight is computed (and every check made) before the first one is assigned,
    /// so an error leaves exactly the previous weights and adapter.
    pub fn replace_adapter(&mut self, adapter_dir: Option<&Path>, merge: bool) -> anyhow::Result<()> {
        let device = self.model.device().clone();
        let shapes = self.model.linear_shapes();
        let new = match adapter_dir {
            Some(d) => Some(
                Adapter::load(d, &device, &shapes).with_context(|| format!("loading the adapter {}", d.display()))?,
            ),
            None => None,
        };
        // Stage: (index, weight, unmerged branch, merged) of every linear that changes.
        let mut staged = Vec::new();
        let mut adapted = Vec::new();
        let mut vb = None;
        for (i, lin) in self.model.linears_mut().into_iter().enumerate() {
            let branch = match &new {
                Some(a) => a.branch_for(&lin.name, lin.in_dim(), lin.out_dim())?,
                None => None,
            };
            if branch.is_none() && !lin.merged && lin.lora.is_none() {
                continue;
            }
            // Only merged linears changed their weights; unmerged branches just come off.
            let base = if lin.merged {
                let vb = match &mut vb {
                    Some(vb) => vb,
                    None => {
                        vb.insert(weights::ShardReader::var_builder(&self.files.weights, lin.weight.dtype(), &device)?)
                    }
                };
                vb.get((lin.out_dim(), lin.in_dim()), &format!("{}.weight", lin.name))?
            } else {
                lin.weight.clone()
            };
            let next = match branch {
                Some(b) => {
                    adapted.push(lin.name.clone());
                    if merge {
                        (linear::merged_weight(&base, &b)?, None, true)
                    } else {
                        (base, Some(b), false)
                    }
                }
                None => (base, None, false),
            };
            staged.push((i, next));
        }
        if let Some(a) = &new {
            a.check_all_used(&adapted)?;
        }
        // Commit: plain assignments, nothing can fail from here on.
        let mut linears = self.model.linears_mut();
        for (i, (weight, lora, merged)) in staged {
            let lin = &mut linears[i];
            lin.weight = weight;
            lin.lora = lora;
            lin.merged = merged;
        }
        adapted.sort();
        self.adapted_modules = adapted;
        self.adapter = new;
        Ok(())
    }

    /// A stable name for this base + adapter, recorded with every caption.
    pub fn default_version(&self) -> anyhow::Result<String> {
        let base = short_name(&self.files.source);
        Ok(match &self.adapter {
            None => base,
            Some(a) => {
                let dir = a.source.as_deref().unwrap_or(Path::new("adapter"));
                let files: Vec<PathBuf> = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
                    .iter()
                    .map(|f| dir.join(f))
                    .filter(|p| p.exists())
                    .collect();
                format!("{base}+{}@{}", short_name(&dir.to_string_lossy()), loader::fingerprint(&files)?)
            }
        })
    }

    /// Stacks CHW pixel arrays into a [B, 3, H, W] tensor on the model's device and dtype.
    pub fn pixel_batch(&self, pixel_values: &[&[f32]]) -> anyhow::Result<Tensor> {
        let (h, w) = (self.processor.height as usize, self.processor.width as usize);
        let mut flat = Vec::with_capacity(pixel_values.len() * 3 * h * w);
        for pv in pixel_values {
            anyhow::ensure!(pv.len() == 3 * h * w, "pixel_values of {} floats, expected 3x{h}x{w}", pv.len());
            flat.extend_from_slice(pv);
        }
        Ok(Tensor::from_vec(flat, (pixel_values.len(), 3, h, w), self.model.device())?.to_dtype(self.model.dtype())?)
    }

    /// Checks a requested generation length against the model's positions (see
    /// [`Blip2Model::max_new_tokens_limit`]) where it enters: `setting` names the option to change.
    pub fn check_max_new_tokens(&self, requested: usize, setting: &str) -> anyhow::Result<()> {
        let limit = self.model.max_new_tokens_limit();
        anyhow::ensure!(
            (1..=limit).contains(&requested),
            "{setting} = {requested}, but {} can generate 1 to {limit} tokens (max_position_embeddings {} \
             of its language model minus {} query tokens); set {setting} to a value from 1 to {limit}",
            self.files.source,
            self.model.config.text_config.max_position_embeddings,
            self.model.config.num_query_tokens
        );
        Ok(())
    }

    /// Greedy captions for a batch of preprocessed pairs.
    pub fn caption_pixels(&self, pixel_values: &[&[f32]], max_new_tokens: usize) -> anyhow::Result<Vec<Generated>> {
        if pixel_values.is_empty() {
            return Ok(Vec::new());
        }
        let pv = self.pixel_batch(pixel_values)?;
        let ids = self.model.generate_greedy(&pv, max_new_tokens, &self.eos_token_ids)?;
        ids.into_iter().map(|token_ids| Ok(Generated { caption: self.decode(&token_ids)?, token_ids })).collect()
    }

    /// Token ids to text as transformers 4.35 does: special tokens skipped, tokenization spaces
    /// cleaned up (when configured), then trimmed.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let text = self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("decoding tokens: {e}"))?;
        let text = if self.clean_up_tokenization_spaces { clean_up_tokenization(&text) } else { text };
        Ok(text.trim().to_owned())
    }

    /// Caption for one (original, modified) pair of images.
    pub fn caption_images(
        &self,
        original: &image::DynamicImage,
        modified: &image::DynamicImage,
        max_new_tokens: usize,
    ) -> anyhow::Result<Generated> {
        let pv = self.processor.preprocess_pair(original, modified);
        Ok(self.caption_pixels(&[&pv], max_new_tokens)?.remove(0))
    }
}

/// transformers' `clean_up_tokenization`: removes the spaces a word-piece tokenizer leaves before
/// punctuation and English contractions.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// How versions name a model source: the last path component of a directory, or the hub id.
pub fn short_name(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    if Path::new(trimmed).is_dir() {
        Path::new(trimmed).file_name().map_or(trimmed.to_owned(), |n| n.to_string_lossy().into_owned())
    } else {
        trimmed.to_owned()
    }
}
