//! The BLIP2IDC captioner behind the service's [`Captioner`] trait.

use std::path::PathBuf;

use super::{Caption, Captioner, CaptionerFactory, StepDecoder};
use crate::config::ModelConfig;
use crate::model::engine::DecodeBatch;
use crate::model::loader::{check_device, dtype, open_device};
use crate::model::preprocess::ImageProcessorConfig;
use crate::model::{Blip2Idc, LoadOptions};

/// A loaded model plus its generation settings and version.
pub struct Blip2IdcCaptioner {
    model: Blip2Idc,
    version: String,
    max_new_tokens: usize,
    /// Continuous batching: the running rows and their most (`model.max_running`); none for fixed
    /// batches.
    engine: Option<(DecodeBatch, usize)>,
}

impl Blip2IdcCaptioner {
    pub fn load(cfg: &ModelConfig) -> anyhow::Result<Blip2IdcCaptioner> {
        Self::load_with_adapter(cfg, cfg.adapter.as_deref().map(PathBuf::from), cfg.version.clone())
    }

    /// Loads the configured base with another adapter (hot swap).
    pub fn load_with_adapter(
        cfg: &ModelConfig,
        adapter: Option<PathBuf>,
        version: Option<String>,
    ) -> anyhow::Result<Blip2IdcCaptioner> {
        let opts = LoadOptions {
            checkpoint: cfg.checkpoint.clone(),
            adapter,
            dtype: dtype(cfg.dtype),
            device: open_device(cfg.device)?,
            merge_adapter: true,
        };
        let model = Blip2Idc::load(&opts)?;
        model.check_max_new_tokens(cfg.max_new_tokens, "model.max_new_tokens")?;
        let version = match version {
            Some(v) => v,
            None => model.default_version()?,
        };
        Ok(Blip2IdcCaptioner { model, version, max_new_tokens: cfg.max_new_tokens, engine: None }
            .with_continuous_batching(cfg.max_running))
    }

    /// Decodes up to `max_running` rows at once with continuous batching (0: fixed batches).
    pub fn with_continuous_batching(mut self, max_running: usize) -> Self {
        self.engine = (max_running > 0).then(|| (DecodeBatch::new(&self.model.model), max_running));
        self
    }

    /// A captioner of an already loaded model (on the thread that will run it).
    pub fn from_model(model: Blip2Idc, version: String, max_new_tokens: usize) -> anyhow::Result<Blip2IdcCaptioner> {
        model.check_max_new_tokens(max_new_tokens, "max_new_tokens")?;
        Ok(Blip2IdcCaptioner { model, version, max_new_tokens, engine: None })
    }

    pub fn model(&self) -> &Blip2Idc {
        &self.model
    }
}

impl Captioner for Blip2IdcCaptioner {
    fn model_version(&self) -> &str {
        &self.version
    }

    fn processor(&self) -> &ImageProcessorConfig {
        &self.model.processor
    }

    fn caption_batch(&mut self, pixel_values: &[&[f32]]) -> anyhow::Result<Vec<Caption>> {
        let generated = self.model.caption_pixels(pixel_values, self.max_new_tokens)?;
        Ok(generated.into_iter().map(|g| Caption { text: g.caption, token_ids: g.token_ids }).collect())
    }

    fn decoder(&mut self) -> Option<&mut dyn StepDecoder> {
        if self.engine.is_some() {
            Some(self)
        } else {
            None
        }
    }

    fn swaps_adapters(&self) -> bool {
        true
    }

    fn swap_adapter(&mut self, adapter_dir: Option<&std::path::Path>, version: &str) -> anyhow::Result<()> {
        self.model.replace_adapter(adapter_dir, true)?;
        self.version = version.to_owned();
        Ok(())
    }
}

impl StepDecoder for Blip2IdcCaptioner {
    fn capacity(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.1)
    }

    fn admit(&mut self, pixel_values: &[&[f32]], keys: &[u64]) -> anyhow::Result<Vec<(u64, Caption)>> {
        let pv = self.model.pixel_batch(pixel_values)?;
        let (batch, _) = self.engine.as_mut().expect("continuous batching is on");
        let done = batch.admit(&self.model.model, &pv, keys, self.max_new_tokens, &self.model.eos_token_ids)?;
        self.captions(done)
    }

    fn step(&mut self) -> anyhow::Result<Vec<(u64, Caption)>> {
        let (batch, _) = self.engine.as_mut().expect("continuous batching is on");
        let done = batch.step(&self.model.model, &self.model.eos_token_ids)?;
        self.captions(done)
    }

    fn clear(&mut self) {
        if let Some((batch, _)) = self.engine.as_mut() {
            *batch = DecodeBatch::new(&self.model.model);
        }
    }
}

impl Blip2IdcCaptioner {
    fn captions(&self, done: Vec<crate::model::engine::Finished>) -> anyhow::Result<Vec<(u64, Caption)>> {
        done.into_iter()
            .map(|f| Ok((f.key, Caption { text: self.model.decode(&f.token_ids)?, token_ids: f.token_ids })))
            .collect()
    }
}

/// A factory that loads the configured model on the captioner thread.
pub fn factory(cfg: &ModelConfig) -> anyhow::Result<CaptionerFactory> {
    // Fail fast on what can be checked without loading.
    check_device(cfg.device)?;
    let blas = crate::model::blas::configure(&cfg.blas)?;
    tracing::info!(%blas, "CPU matrix products");
    let cfg = cfg.clone();
    Ok(Box::new(move || Ok(Box::new(Blip2IdcCaptioner::load(&cfg)?) as Box<dyn super::Captioner>)))
}
