//! The captioning loss exactly as the reference computes it.
//!
//! Labels are `tokenizer(caption, add_special_tokens=True, max_length=30, padding="max_length",
//! truncation=True)`: the bos id first, the caption, then padding (the BLIP2IDC code pads with the eos
//! id 2). The same ids are the language model's input after the image prefix. The loss is
//! transformers 4.35's: logits of the last `L` positions, shifted by one against the labels,
//! cross-entropy averaged over every position — pads included (no -100 masking), which is the
//! reference's default here; [`PadMasking::Ignore`] is the option that leaves padding out.

use candle_core::{DType, Device, Tensor, D};

use crate::model::blip2::Blip2Model;
use crate::model::ops::Mode;

pub use crate::config::PadMasking;

/// Tokenises captions into fixed-length label rows.
pub fn encode_labels(
    tokenizer: &tokenizers::Tokenizer,
    captions: &[&str],
    max_length: usize,
    pad_id: u32,
) -> anyhow::Result<Vec<Vec<u32>>> {
    captions
        .iter()
        .map(|c| {
            let enc = tokenizer.encode(*c, true).map_err(|e| anyhow::anyhow!("tokenizing {c:?}: {e}"))?;
            let mut ids: Vec<u32> = enc.get_ids().iter().copied().take(max_length).collect();
            ids.resize(max_length, pad_id);
            Ok(ids)
        })
        .collect()
}

/// Mean cross-entropy of the shifted predictions, \[scalar\] f32.
pub fn caption_loss(
    model: &Blip2Model,
    pixel_values: &Tensor,
    labels: &[Vec<u32>],
    mode: Mode,
    masking: PadMasking,
    pad_id: u32,
) -> candle_core::Result<Tensor> {
    let device = model.device();
    let (b, l) = (labels.len(), labels[0].len());
    let ids = Tensor::from_vec(labels.concat(), (b, l), device)?;
    let logits = model.forward_text_logits(pixel_values, &ids, mode)?.to_dtype(DType::F32)?;
    let v = logits.dim(D::Minus1)?;
    let pred = logits.narrow(1, 0, l - 1)?.reshape((b * (l - 1), v))?;
    let target: Vec<u32> = labels.iter().flat_map(|row| row[1..].iter().copied()).collect();
    let log_probs = candle_nn::ops::log_softmax(&pred, D::Minus1)?;
    let picked = log_probs.gather(&Tensor::from_vec(target, (b * (l - 1), 1), device)?, 1)?.squeeze(1)?;
    match masking {
        PadMasking::Count => picked.mean_all()?.neg(),
        PadMasking::Ignore => {
            let weights = pad_weights(labels, pad_id, device)?;
            let total = weights.sum_all()?;
            (picked * &weights)?.sum_all()?.div(&total)?.neg()
        }
    }
}

/// 1 for positions that count (everything up to and including the first pad after the caption).
fn pad_weights(labels: &[Vec<u32>], pad_id: u32, device: &Device) -> candle_core::Result<Tensor> {
    let mut w = Vec::with_capacity(labels.len() * labels[0].len());
    for row in labels {
        let mut seen_pad = false;
        for &t in &row[1..] {
            w.push(if seen_pad { 0f32 } else { 1.0 });
            seen_pad |= t == pad_id;
        }
    }
    Tensor::from_vec(w, labels.len() * (labels[0].len() - 1), device)
}
