//! The BLIP2IDC captioner behind the service's [`Captioner`] trait.

use std::path::PathBuf;

use super::{Caption, Captioner, CaptionerFactory};
use crate::config::ModelConfig;
use crate::model::loader::{check_device, dtype, open_device};
use crate::model::preprocess::ImageProcessorConfig;
use crate::model::{Blip2Idc, LoadOptions};

/// A loaded model plus its generation settings and version.
pub struct Blip2IdcCaptioner {
    model: Blip2Idc,
    version: String,
    max_new_tokens: usize,
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
        Ok(Blip2IdcCaptioner { model, version, max_new_tokens: cfg.max_new_tokens })
    }

    /// A captioner of an already loaded model (on the thread that will run it).
    pub fn from_model(model: Blip2Idc, version: String, max_new_tokens: usize) -> anyhow::Result<Blip2IdcCaptioner> {
        model.check_max_new_tokens(max_new_tokens, "max_new_tokens")?;
        Ok(Blip2IdcCaptioner { model, version, max_new_tokens })
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

    fn swaps_adapters(&self) -> bool {
        true
    }

    fn swap_adapter(&mut self, adapter_dir: Option<&std::path::Path>, version: &str) -> anyhow::Result<()> {
        self.model.replace_adapter(adapter_dir, true)?;
        self.version = version.to_owned();
        Ok(())
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
