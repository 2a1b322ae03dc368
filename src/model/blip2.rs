//! `Blip2ForConditionalGeneration` (transformers 4.35, OPT language model): vision tower → Q-Former
//! over the learned query tokens → `language_projection` → the projected queries are concatenated
//! *before* the prompt's token embeddings and OPT continues from there.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Blip2Config;
use super::linear::Linear;
use super::lora::Adapter;
use super::ops::Mode;
use super::opt::OptForCausalLM;
use super::qformer::QFormerModel;
use super::vision::VisionModel;

/// The whole model.
#[derive(Clone, Debug)]
pub struct Blip2Model {
    pub config: Blip2Config,
    pub vision_model: VisionModel,
    pub query_tokens: Tensor,
    pub qformer: QFormerModel,
    pub language_projection: Linear,
    pub language_model: OptForCausalLM,
}

impl Blip2Model {
    /// `vb` is the checkpoint root (HF names: `vision_model.*`, `qformer.*`, `language_model.*`, ...).
    pub fn new(vb: VarBuilder, config: &Blip2Config) -> Result<Self> {
        let q = &config.qformer_config;
        Ok(Blip2Model {
            vision_model: VisionModel::new(vb.pp("vision_model"), &config.vision_config)?,
            query_tokens: vb.get((1, config.num_query_tokens, q.hidden_size), "query_tokens")?,
            qformer: QFormerModel::new(vb.pp("qformer"), q)?,
            language_projection: Linear::new(
                vb.pp("language_projection"),
                q.hidden_size,
                config.text_config.hidden_size,
                true,
            )?,
            language_model: OptForCausalLM::new(vb.pp("language_model"), &config.text_config)?,
            config: config.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        self.query_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.query_tokens.dtype()
    }

    /// Every linear layer of the model, named by HF module path.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.vision_model.linears_mut();
        v.extend(self.qformer.linears_mut());
        v.push(&mut self.language_projection);
        v.extend(self.language_model.linears_mut());
        v
    }

    /// Every parameter with its HF name (what `save_pretrained` writes).
    pub fn named_tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut v = vec![("query_tokens".to_owned(), &mut self.query_tokens)];
        v.extend(self.vision_model.named());
        v.extend(self.qformer.named());
        v.extend(self.language_projection.named());
        v.extend(self.language_model.named());
        v
    }

    /// Re-ties `lm_head` to `embed_tokens` after the latter was replaced (e.g. by a variable).
    pub fn retie_lm_head(&mut self) {
        if self.language_model.tied {
            self.language_model.lm_head = self.language_model.embed_tokens.clone();
        }
    }

    /// Logits of the prompt positions only, [B, L, vocab] for `input_ids` [B, L]: the training
    /// forward (the image-prefix positions never reach `lm_head`).
    pub fn forward_text_logits(&self, pixel_values: &Tensor, input_ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let (hidden, q) = self.hidden_states(pixel_values, input_ids, mode)?;
        self.language_model.logits(&hidden.narrow(1, q, input_ids.dim(1)?)?, mode)
    }

    /// The language model's last hidden states [B, Q + L, D] over image prefix + prompt, and Q.
    fn hidden_states(&self, pixel_values: &Tensor, input_ids: &Tensor, mode: Mode) -> Result<(Tensor, usize)> {
        let prefix = self.image_prefix(pixel_values, mode)?;
        let embeds = Tensor::cat(&[&prefix, &self.language_model.embed(input_ids)?.to_dtype(prefix.dtype())?], 1)?;
        Ok((self.language_model.forward_embeds(&embeds, None, mode)?, prefix.dim(1)?))
    }

    /// In/out dimensions of every linear, by module name: what an adapter file must fit.
    pub fn linear_shapes(&mut self) -> crate::model::lora::LinearShapes {
        self.linears_mut().into_iter().map(|l| (l.name.clone(), (l.in_dim(), l.out_dim()))).collect()
    }

    /// Attaches `adapter`'s LoRA branches to the modules it targets (PEFT matching), merged into the
    /// weights when `merge`. Returns the adapted module names, sorted.
    pub fn apply_adapter(&mut self, adapter: &Adapter, merge: bool) -> anyhow::Result<Vec<String>> {
        let mut adapted = Vec::new();
        for lin in self.linears_mut() {
            anyhow::ensure!(!lin.merged && lin.lora.is_none(), "{} already carries an adapter", lin.name);
            if let Some(branch) = adapter.branch_for(&lin.name, lin.in_dim(), lin.out_dim())? {
                lin.lora = Some(branch);
                if merge {
                    lin.merge_lora()?;
                }
                adapted.push(lin.name.clone());
            }
        }
        adapter.check_all_used(&adapted)?;
        adapted.sort();
        Ok(adapted)
    }

    /// Vision → Q-Former → projection: the language model's image prefix [B, Q, D_text].
    pub fn image_prefix(&self, pixel_values: &Tensor, mode: Mode) -> Result<Tensor> {
        let image_embeds = self.vision_model.forward(pixel_values, mode)?;
        let b = image_embeds.dim(0)?;
        let (_, nq, dq) = self.query_tokens.dims3()?;
        let queries = self.query_tokens.broadcast_as((b, nq, dq))?.contiguous()?;
        let q = self.qformer.forward(&queries, &image_embeds, mode)?;
        self.language_projection.forward(&q, mode)
    }

    /// Full logits [B, Q + L, vocab] for `pixel_values` [B, 3, S, S] and prompt `input_ids` [B, L]
    /// (what `model(pixel_values=..., input_ids=...)` returns).
    pub fn forward(&self, pixel_values: &Tensor, input_ids: &Tensor, mode: Mode) -> Result<Tensor> {
        self.language_model.logits(&self.hidden_states(pixel_values, input_ids, mode)?.0, mode)
    }

    /// The most tokens greedy decoding can generate: OPT's learned positions must cover the query
    /// tokens, the bos prompt and every generated token but the last (HF has the same bound, and
    /// fails inside the embedding lookup past it).
    pub fn max_new_tokens_limit(&self) -> usize {
        self.config.text_config.max_position_embeddings.saturating_sub(self.config.num_query_tokens)
    }
}
