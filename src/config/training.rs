//! `[retrain]`: the retraining job's settings and the training hyper-parameters, kept with the config
//! layer so that configuration never imports the code it configures (`train::job`, `train::trainer`,
//! `train::loss` and `train::augment` use these and re-export them under their old paths).
//!
//! Defaults live in one place, `config/default.toml`: the `Default` impls here read that file (the
//! one value it cannot hold, `work_dir` under the system's temporary directory, is [`default_work_dir`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[retrain]` configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Train on earlier (already used) train-split labels too, not only the new ones.
    pub include_previous: bool,
    /// Skip the run when fewer new labels arrived.
    pub min_new_labels: usize,
    /// Share of newly labeled pairs put in the (frozen) holdout.
    #[serde(deserialize_with = "super::float")]
    pub holdout_fraction: f64,
    /// The holdout gets at least this many labels (taken from new ones) before training starts.
    pub min_holdout: usize,
    /// Scheduled mode: time between runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Promotion needs CIDEr-D(candidate) ≥ CIDEr-D(promoted) + this.
    #[serde(deserialize_with = "super::float")]
    pub promotion_min_cider_gain: f64,
    /// ...and no category's CIDEr-D may drop by more than this.
    #[serde(deserialize_with = "super::float")]
    pub max_category_regression: f64,
    /// Where adapters are uploaded: `s3://<adapter_bucket>/<adapter_prefix><version>/`.
    pub adapter_bucket: String,
    /// The key prefix of adapters in `adapter_bucket`.
    pub adapter_prefix: String,
    /// Local scratch directory (downloaded and trained adapters).
    #[serde(default = "default_work_dir")]
    pub work_dir: PathBuf,
    /// Score METEOR too (needs Java and meteor-1.5.jar; reported as null otherwise).
    pub meteor: bool,
    /// LoRA of a fresh adapter (when nothing is promoted yet).
    pub lora_r: usize,
    /// LoRA's alpha (the update is scaled by alpha / r).
    #[serde(deserialize_with = "super::float")]
    pub lora_alpha: f64,
    /// LoRA's dropout on the adapter input while training.
    #[serde(deserialize_with = "super::float")]
    pub lora_dropout: f64,
    /// Hyper-parameters of each run.
    pub train: TrainConfig,
}

/// `retrain.work_dir` when not set: `blip2idc-retrain` in the system's temporary directory.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("blip2idc-retrain")
}

/// The shipped defaults (`config/default.toml`'s `[retrain]`).
impl Default for RetrainConfig {
    fn default() -> Self {
        super::Config::defaults().retrain
    }
}

impl RetrainConfig {
    /// Adds a message naming the key for each bad value to `errs`.
    pub fn check(&self, errs: &mut Vec<String>) {
        if !(0.0..1.0).contains(&self.holdout_fraction) || self.holdout_fraction == 0.0 {
            errs.push(format!("retrain.holdout_fraction {} is not in (0, 1)", self.holdout_fraction));
        }
        if self.interval.is_zero() {
            errs.push("retrain.interval must be > 0".into());
        }
        if self.lora_r == 0 {
            errs.push("retrain.lora_r must be > 0".into());
        }
        if !crate::s3uri::valid_bucket(&self.adapter_bucket) {
            errs.push(format!("retrain.adapter_bucket {:?} is not a valid bucket name", self.adapter_bucket));
        }
        errs.extend(self.train.problems().into_iter().map(|p| format!("retrain.train.{p}")));
    }
}

/// Hyper-parameters of a run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training pairs (early stopping may end sooner).
    pub epochs: usize,
    /// Pairs per optimizer step (before accumulation).
    pub batch_size: usize,
    /// Batches whose gradients are summed before each step.
    pub grad_accum: usize,
    /// AdamW learning rate (the authors used 4e-5 to 1e-4).
    #[serde(deserialize_with = "super::float")]
    pub lr: f64,
    /// AdamW weight decay.
    #[serde(deserialize_with = "super::float")]
    pub weight_decay: f64,
    /// Epochs without a better holdout loss before stopping (0 = never stop early).
    pub patience: usize,
    /// Seeds the LoRA initialisation, the data order and the dropout masks.
    pub seed: u64,
    /// Label tokens per caption (longer captions are cut).
    pub max_length: usize,
    /// Id that pads the label rows (the BLIP2IDC code pads with eos = 2).
    pub pad_id: u32,
    /// Whether padding positions count in the loss.
    pub pad_masking: PadMasking,
    /// Apply the LoRA dropout (and the base model's dropouts when `base_dropout`).
    pub dropout: bool,
    /// Also apply the base model's dropouts (as `model.train()` does).
    pub base_dropout: bool,
    /// Augmentation of training images; none when the table is absent.
    #[serde(default)]
    pub augment: Option<AugmentConfig>,
}

/// The shipped defaults (`config/default.toml`'s `[retrain.train]`).
impl Default for TrainConfig {
    fn default() -> Self {
        RetrainConfig::default().train
    }
}

impl TrainConfig {
    /// Checks the hyper-parameters (for runs that do not come from a configuration file).
    pub fn validate(&self) -> Result<(), super::ConfigErrors> {
        let errs = self.problems();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(super::ConfigErrors(errs))
        }
    }

    /// One message per bad value, each starting with the key.
    fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.epochs == 0 {
            errs.push("epochs must be > 0".to_owned());
        }
        if self.batch_size == 0 {
            errs.push("batch_size must be > 0".to_owned());
        }
        if self.grad_accum == 0 {
            errs.push("grad_accum must be > 0".to_owned());
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            errs.push(format!("lr {} is not in (0, 1)", self.lr));
        }
        if self.max_length < 2 {
            errs.push("max_length must be at least 2".to_owned());
        }
        errs
    }
}

/// Whether padding positions count in the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMasking {
    /// As the reference: every position counts (the model learns to emit the pad/eos id).
    Count,
    /// Positions whose label is padding after the caption are ignored (the first one still teaches
    /// the model to stop).
    Ignore,
}

/// What to apply, each with its probability.
#[derive(Clone, Copy, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability of torchvision's `GaussianBlur(3, sigma=(0.1, 0.5))` on each image.
    #[serde(deserialize_with = "super::float")]
    pub blur_probability: f64,
    /// Probability of re-encoding each image as JPEG at a quality drawn from `jpeg_quality`.
    #[serde(deserialize_with = "super::float")]
    pub jpeg_probability: f64,
    /// The JPEG quality range, inclusive.
    pub jpeg_quality: (u8, u8),
}

/// The shipped defaults (`config/default.toml`'s `[retrain.train.augment]`).
impl Default for AugmentConfig {
    fn default() -> Self {
        TrainConfig::default().augment.expect("config/default.toml has [retrain.train.augment]")
    }
}
