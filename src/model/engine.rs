//! Continuous (in-flight) batching of greedy decoding: pairs join the running batch as others finish,
//! instead of waiting for the longest caption of a fixed batch.
//!
//! [`DecodeBatch::admit`] prefills new pairs (vision → Q-Former → OPT over the image prefix and bos,
//! batched) and appends their KV-cache rows to the running cache; [`DecodeBatch::step`] decodes one
//! token for every running row. Rows sit at different positions: each keeps its own position ids, and
//! the positions a row did not fill (left padding, where a shorter row joined a longer cache) are
//! masked from its attention, so every row computes what it would alone. Columns no row needs any
//! more are dropped after each step, and finished rows leave at once. The stop rule is
//! [`Blip2Model::generate_greedy`]'s: the first eos (not included) or `max_new_tokens`.

use candle_core::{DType, IndexOp, Result, Tensor};

use super::blip2::Blip2Model;
use super::ops::Mode;
use super::opt::KvCache;

/// Cached columns of padding worth dropping (each drop copies the cache).
const DROP_AT_LEAST: usize = 16;

/// A row that finished: the caller's key and its generated ids (eos excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub key: u64,
    pub token_ids: Vec<u32>,
}

/// A running sequence.
#[derive(Debug)]
struct Row {
    key: u64,
    tokens: Vec<u32>,
    /// Cached positions this row filled (its next token's position).
    real: usize,
    max_new_tokens: usize,
}

/// The running decode batch.
#[derive(Debug)]
pub struct DecodeBatch {
    cache: KvCache,
    rows: Vec<Row>,
}

impl DecodeBatch {
    pub fn new(model: &Blip2Model) -> Self {
        DecodeBatch { cache: KvCache::new(model.language_model.layers.len()), rows: Vec::new() }
    }

    /// Running rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Prefills the pairs `pixel_values` [n, 3, S, S] under the caller's `keys` and adds those still
    /// running to the batch; returns those that finished at their first token.
    pub fn admit(
        &mut self,
        model: &Blip2Model,
        pixel_values: &Tensor,
        keys: &[u64],
        max_new_tokens: usize,
        eos: &[u32],
    ) -> Result<Vec<Finished>> {
        self.admit_each(model, pixel_values, keys, &vec![max_new_tokens; keys.len()], eos)
    }

    /// [`DecodeBatch::admit`] with a token limit per pair (`max_new_tokens[i]` for `keys[i]`): rows of
    /// different limits share the batch, each stopping at its own.
    pub fn admit_each(
        &mut self,
        model: &Blip2Model,
        pixel_values: &Tensor,
        keys: &[u64],
        max_new_tokens: &[usize],
        eos: &[u32],
    ) -> Result<Vec<Finished>> {
        let limit = model.max_new_tokens_limit();
        if let Some(&over) = max_new_tokens.iter().find(|&&m| m > limit) {
            candle_core::bail!("max_new_tokens = {over} is more than this model can generate: at most {limit}");
        }
        if pixel_values.dim(0)? != keys.len() || max_new_tokens.len() != keys.len() {
            candle_core::bail!(
                "{} keys and {} limits for {} pairs",
                keys.len(),
                max_new_tokens.len(),
                pixel_values.dim(0)?
            );
        }
        if max_new_tokens.iter().all(|&m| m == 0) || keys.is_empty() {
            return Ok(keys.iter().map(|&key| Finished { key, token_ids: Vec::new() }).collect());
        }
        let mode = Mode::Inference;
        let lm = &model.language_model;
        let n = keys.len();
        let prefix = model.image_prefix(pixel_values, mode)?;
        let bos = Tensor::new(vec![model.config.text_config.bos_token_id; n], model.device())?.reshape((n, 1))?;
        let embeds = Tensor::cat(&[&prefix, &lm.embed(&bos)?.to_dtype(prefix.dtype())?], 1)?;
        let mut cache = KvCache::new(lm.layers.len());
        let hidden = lm.forward_embeds(&embeds, Some(&mut cache), mode)?;
        let last = hidden.i((.., hidden.dim(1)? - 1, ..))?;
        let next: Vec<u32> = lm.logits(&last, mode)?.to_dtype(DType::F32)?.argmax(1)?.to_vec1()?;
        let filled = cache.len();
        let (mut finished, mut keep, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ((&key, &tok), &max_new_tokens)) in keys.iter().zip(&next).zip(max_new_tokens).enumerate() {
            if max_new_tokens == 0 || eos.contains(&tok) {
                finished.push(Finished { key, token_ids: Vec::new() });
            } else if max_new_tokens == 1 {
                finished.push(Finished { key, token_ids: vec![tok] });
            } else {
                keep.push(i as u32);
                rows.push(Row { key, tokens: vec![tok], real: filled, max_new_tokens });
            }
        }
        if rows.is_empty() {
            return Ok(finished);
        }
        if keep.len() < n {
            cache.select_rows(&Tensor::new(keep.as_slice(), model.device())?)?;
        }
        if self.rows.is_empty() {
            self.cache = cache;
        } else {
            self.cache.append_rows(cache)?;
        }
        self.rows.extend(rows);
        Ok(finished)
    }

    /// Decodes one token for every running row; returns the rows that finished.
    pub fn step(&mut self, model: &Blip2Model, eos: &[u32]) -> Result<Vec<Finished>> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let mode = Mode::Inference;
        let lm = &model.language_model;
        let n = self.rows.len();
        let cached = self.cache.len();
        let last: Vec<u32> = self.rows.iter().map(|r| *r.tokens.last().expect("a running row has a token")).collect();
        let positions: Vec<u32> = self.rows.iter().map(|r| r.real as u32).collect();
        let padding: Vec<usize> = self.rows.iter().map(|r| cached - r.real).collect();
        let embeds = lm.embed(&Tensor::new(last, model.device())?.reshape((n, 1))?)?;
        let hidden = lm.forward_step(&embeds, &mut self.cache, &positions, &padding, mode)?;
        let next: Vec<u32> = lm.logits(&hidden.i((.., 0, ..))?, mode)?.to_dtype(DType::F32)?.argmax(1)?.to_vec1()?;
        let (mut finished, mut keep) = (Vec::new(), Vec::with_capacity(n));
        let mut rows = Vec::with_capacity(n);
        for (i, (mut row, tok)) in std::mem::take(&mut self.rows).into_iter().zip(next).enumerate() {
            row.real += 1;
            if eos.contains(&tok) {
                finished.push(Finished { key: row.key, token_ids: row.tokens });
                continue;
            }
            row.tokens.push(tok);
            if row.tokens.len() == row.max_new_tokens {
                finished.push(Finished { key: row.key, token_ids: row.tokens });
                continue;
            }
            keep.push(i as u32);
            rows.push(row);
        }
        if !rows.is_empty() && rows.len() < n {
            self.cache.select_rows(&Tensor::new(keep.as_slice(), model.device())?)?;
        }
        // Padding that no remaining row needs any more, dropped once it is worth a copy of the cache.
        if let Some(unneeded) = rows.iter().map(|r| self.cache.len() - r.real).min() {
            if unneeded >= DROP_AT_LEAST.max(self.cache.len() / 4) {
                self.cache.drop_front(unneeded)?;
            }
        } else {
            self.cache = KvCache::new(lm.layers.len());
        }
        self.rows = rows;
        Ok(finished)
    }
}

impl Blip2Model {
    /// Greedy decoding with a KV cache, batched. Every sequence starts from `[bos]` after the image
    /// prefix and stops at the first id in `eos` (not included) or after `max_new_tokens`. Finished
    /// sequences leave the batch, so the others run at the cost of the survivors only.
    /// It is the engine with every row admitted at once: the same code path as continuous batching.
    pub fn generate_greedy(&self, pixel_values: &Tensor, max_new_tokens: usize, eos: &[u32]) -> Result<Vec<Vec<u32>>> {
        let keys: Vec<u64> = (0..pixel_values.dim(0)? as u64).collect();
        let mut batch = DecodeBatch::new(self);
        let mut out = vec![Vec::new(); keys.len()];
        let mut done = batch.admit(self, pixel_values, &keys, max_new_tokens, eos)?;
        loop {
            for f in done {
                out[f.key as usize] = f.token_ids;
            }
            if batch.is_empty() {
                return Ok(out);
            }
            done = batch.step(self, eos)?;
        }
    }
}
