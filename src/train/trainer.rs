//! The training loop: AdamW over the given variables, mini-batches with gradient accumulation,
//! optional non-disruptive augmentation, holdout loss after every epoch, early stopping that restores
//! the best epoch's weights, progress bars on a terminal and structured logs otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::augment::{augment, AugmentConfig};
use super::loss::caption_loss;
use super::optim::{AdamW, AdamWConfig};
use crate::model::blip2::Blip2Model;
use crate::model::ops::{Mode, TrainFlags};
use crate::model::preprocess::ImageProcessorConfig;

pub use crate::config::TrainConfig;

/// What the model sees for one example.
#[derive(Clone, Debug)]
pub enum Input {
    /// A BLIP2IDC pair (stacked at batch time, after augmentation). Shared: a pair with several
    /// reference captions is several examples of the same images.
    Pair { original: Arc<RgbImage>, modified: Arc<RgbImage> },
    /// One image (BLIP-2-style captioning, for pretraining a base).
    Single(Arc<RgbImage>),
}

/// One training example: input and label ids (see [`super::loss::encode_labels`]).
#[derive(Clone, Debug)]
pub struct Example {
    pub input: Input,
    pub labels: Vec<u32>,
}

/// Loss figures of one epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub holdout_loss: Option<f64>,
    pub seconds: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    /// The epoch whose weights were kept (1-based; the last one without a holdout).
    pub best_epoch: usize,
    pub best_holdout_loss: Option<f64>,
    pub optimizer_steps: u64,
    pub stopped_early: bool,
}

/// Runs the loop. `vars` are the trainable variables already wired into `model` (LoRA, or every
/// weight for full training: matmuls see that a weight is a variable and give it a gradient).
pub fn train(
    model: &Blip2Model,
    vars: Vec<Var>,
    train: &[Example],
    holdout: &[Example],
    processor: &ImageProcessorConfig,
    cfg: &TrainConfig,
) -> anyhow::Result<TrainReport> {
    cfg.validate().map_err(|e| anyhow::anyhow!("training config: {e}"))?;
    anyhow::ensure!(!train.is_empty(), "no training examples");
    crate::model::ops::seed_dropout(cfg.seed);
    let mode = Mode::Train(TrainFlags { lora_dropout: cfg.dropout, base_dropout: cfg.dropout && cfg.base_dropout });
    let mut opt =
        AdamW::new(vars.clone(), AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..AdamWConfig::default() })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size * cfg.grad_accum);
    let bar = progress_bar((cfg.epochs * steps_per_epoch) as u64);
    let mut report = TrainReport {
        epochs: Vec::new(),
        best_epoch: 0,
        best_holdout_loss: None,
        optimizer_steps: 0,
        stopped_early: false,
    };
    let mut best: Option<Vec<Tensor>> = None;
    let mut since_best = 0;
    // The holdout is not augmented: preprocess it once, not every epoch.
    let holdout_batches = fixed_batches(model, holdout, processor, cfg)?;
    for epoch in 1..=cfg.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut loss_n) = (0.0, 0usize);
        for step in order.chunks(cfg.batch_size * cfg.grad_accum) {
            let mut grads: Option<GradStore> = None;
            let micro: Vec<&[usize]> = step.chunks(cfg.batch_size).collect();
            for idx in &micro {
                let examples: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
                let pv = pixel_batch(model, &examples, processor, cfg.augment.as_ref(), &mut rng)?;
                let labels: Vec<Vec<u32>> = examples.iter().map(|e| e.labels.clone()).collect();
                let loss = caption_loss(model, &pv, &labels, mode, cfg.pad_masking, cfg.pad_id)?;
                loss_sum += loss.to_scalar::<f32>()? as f64 * examples.len() as f64;
                loss_n += examples.len();
                let g = (loss / micro.len() as f64)?.backward()?;
                grads = Some(match grads {
                    None => g,
                    Some(mut acc) => {
                        for v in &vars {
                            if let Some(gi) = g.get(v.as_tensor()) {
                                let sum = match acc.get(v.as_tensor()) {
                                    Some(a) => (a + gi)?,
                                    None => gi.clone(),
                                };
                                acc.insert(v.as_tensor(), sum);
                            }
                        }
                        acc
                    }
                });
            }
            opt.step(grads.as_ref().expect("at least one micro-batch"))?;
            report.optimizer_steps += 1;
            if let Some(b) = &bar {
                b.set_message(format!("epoch {epoch}/{} loss {:.4}", cfg.epochs, loss_sum / loss_n as f64));
                b.inc(1);
            }
        }
        let train_loss = loss_sum / loss_n.max(1) as f64;
        let holdout_loss = if holdout.is_empty() { None } else { Some(batches_loss(model, &holdout_batches, cfg)?) };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(epoch, train_loss, holdout_loss, seconds, "epoch done");
        report.epochs.push(EpochReport { epoch, train_loss, holdout_loss, seconds });
        match holdout_loss {
            Some(h) if report.best_holdout_loss.is_none_or(|b| h < b) => {
                report.best_holdout_loss = Some(h);
                report.best_epoch = epoch;
                best = Some(vars.iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?);
                since_best = 0;
            }
            Some(_) => {
                since_best += 1;
                if cfg.patience > 0 && since_best >= cfg.patience {
                    report.stopped_early = true;
                    tracing::info!(epoch, best_epoch = report.best_epoch, "early stopping");
                    break;
                }
            }
            None => report.best_epoch = epoch,
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if let Some(best) = best {
        for (v, t) in vars.iter().zip(best) {
            v.set(&t)?;
        }
    }
    Ok(report)
}

/// `examples` preprocessed without augmentation, in batches of `cfg.batch_size`: pixels and labels.
fn fixed_batches(
    model: &Blip2Model,
    examples: &[Example],
    processor: &ImageProcessorConfig,
    cfg: &TrainConfig,
) -> anyhow::Result<Vec<(Tensor, Vec<Vec<u32>>)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    examples
        .chunks(cfg.batch_size.max(1))
        .map(|chunk| {
            let refs: Vec<&Example> = chunk.iter().collect();
            let pv = pixel_batch(model, &refs, processor, None, &mut rng)?;
            Ok((pv, chunk.iter().map(|e| e.labels.clone()).collect()))
        })
        .collect()
}

/// Mean loss over preprocessed batches.
fn batches_loss(model: &Blip2Model, batches: &[(Tensor, Vec<Vec<u32>>)], cfg: &TrainConfig) -> anyhow::Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for (pv, labels) in batches {
        let loss = caption_loss(model, pv, labels, Mode::Inference, cfg.pad_masking, cfg.pad_id)?;
        sum += loss.to_scalar::<f32>()? as f64 * labels.len() as f64;
        n += labels.len();
    }
    Ok(sum / n.max(1) as f64)
}

/// Preprocesses (and augments) a batch into [B, 3, H, W] on the model's device and dtype.
pub fn pixel_batch(
    model: &Blip2Model,
    examples: &[&Example],
    processor: &ImageProcessorConfig,
    augmentation: Option<&AugmentConfig>,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<Tensor> {
    let (h, w) = (processor.height as usize, processor.width as usize);
    let mut flat = Vec::with_capacity(examples.len() * 3 * h * w);
    for e in examples {
        let aug = |img: &Arc<RgbImage>, rng: &mut rand::rngs::StdRng| match augmentation {
            Some(a) => Arc::new(augment(img, a, rng)),
            None => img.clone(),
        };
        let pixels = match &e.input {
            Input::Pair { original, modified } => processor.pair_values(&aug(original, rng), &aug(modified, rng)),
            Input::Single(img) => processor.pixel_values(&aug(img, rng)),
        };
        flat.extend(pixels);
    }
    Ok(Tensor::from_vec(flat, (examples.len(), 3, h, w), model.device())?.to_dtype(model.dtype())?)
}

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps {msg} (eta {eta})",
        )
        .expect("static template"),
    );
    Some(bar)
}
