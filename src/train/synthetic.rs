//! A small synthetic image-difference world, to prove the training path learns.
//!
//! Scenes are 1–3 coloured shapes in the cells of a 2×2 grid. A *single* image is captioned as
//! BLIP-2's pretraining would ("a red square at the top left and a blue circle at the bottom right");
//! a *pair* differs by one edit — add, remove, recolour or move — with several template phrasings per
//! edit, as human labels would. [`tiny_base_config`] is a BLIP-2 small enough to pretrain fully on
//! single images on a CPU ([`pretrain_base`]), which LoRA then adapts to pairs, as BLIP2IDC does.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use image::{Rgb, RgbImage};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::trainer::{Example, Input, TrainConfig, TrainReport};
use crate::model::blip2::Blip2Model;
use crate::model::config::Blip2Config;
use crate::model::preprocess::ImageProcessorConfig;

pub const SHAPES: [&str; 3] = ["square", "circle", "triangle"];
pub const COLOURS: [(&str, [u8; 3]); 4] =
    [("red", [210, 40, 40]), ("green", [40, 170, 60]), ("blue", [40, 70, 210]), ("yellow", [225, 200, 40])];
pub const CELLS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];
/// Side of a rendered scene.
pub const CANVAS: u32 = 64;

/// One shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Object {
    pub shape: usize,
    pub colour: usize,
    pub cell: usize,
}

/// A scene: objects in distinct cells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scene {
    pub objects: Vec<Object>,
}

/// The kinds of edits (the `category` of a label).
pub const EDIT_KINDS: [&str; 4] = ["add", "remove", "recolour", "move"];

/// A pair: two scenes, the edit kind and every acceptable caption of the difference.
#[derive(Clone, Debug)]
pub struct PairSample {
    pub original: Scene,
    pub modified: Scene,
    pub kind: &'static str,
    pub captions: Vec<String>,
}

impl Scene {
    pub fn random(rng: &mut impl Rng, min: usize, max: usize) -> Scene {
        let n = rng.random_range(min..=max);
        let mut cells: Vec<usize> = (0..4).collect();
        let mut objects = Vec::new();
        for _ in 0..n {
            let cell = cells.remove(rng.random_range(0..cells.len()));
            objects.push(Object { shape: rng.random_range(0..3), colour: rng.random_range(0..4), cell });
        }
        objects.sort_by_key(|o| o.cell);
        Scene { objects }
    }

    /// The single-image caption.
    pub fn describe(&self) -> String {
        if self.objects.is_empty() {
            return "an empty grey picture".to_owned();
        }
        let parts: Vec<String> = self
            .objects
            .iter()
            .map(|o| format!("a {} {} at the {}", name_c(o), SHAPES[o.shape], CELLS[o.cell]))
            .collect();
        parts.join(" and ")
    }

    /// Renders the scene; `jitter` moves shapes a little inside their cells.
    pub fn render(&self, rng: &mut impl Rng) -> RgbImage {
        let mut img = RgbImage::from_fn(CANVAS, CANVAS, |x, y| {
            let v = 228 + ((x * 7 + y * 13) % 9) as u8;
            Rgb([v, v, v])
        });
        let half = CANVAS / 2;
        for o in &self.objects {
            let (cx0, cy0) = ((o.cell as u32 % 2) * half, (o.cell as u32 / 2) * half);
            let size = 18 + rng.random_range(0..5);
            let (x0, y0) = (cx0 + rng.random_range(2..half - size - 1), cy0 + rng.random_range(2..half - size - 1));
            let colour = Rgb(COLOURS[o.colour].1);
            for dy in 0..size {
                for dx in 0..size {
                    let inside = match o.shape {
                        0 => true,
                        1 => {
                            let r = size as f32 / 2.0;
                            let (fx, fy) = (dx as f32 + 0.5 - r, dy as f32 + 0.5 - r);
                            fx * fx + fy * fy <= r * r
                        }
                        _ => dx * 2 >= size - dy - 1 && dx * 2 <= size + dy,
                    };
                    if inside {
                        img.put_pixel(x0 + dx, y0 + dy, colour);
                    }
                }
            }
        }
        img
    }
}

fn name_c(o: &Object) -> &'static str {
    COLOURS[o.colour].0
}

/// A random pair with one edit.
pub fn random_pair(rng: &mut impl Rng) -> PairSample {
    loop {
        let original = Scene::random(rng, 1, 3);
        let mut modified = original.clone();
        let kind = *EDIT_KINDS.choose(rng).expect("non-empty");
        let captions: Vec<String> = match kind {
            "add" => {
                let free: Vec<usize> = (0..4).filter(|c| !original.objects.iter().any(|o| o.cell == *c)).collect();
                let Some(&cell) = free.choose(rng) else { continue };
                let o = Object { shape: rng.random_range(0..3), colour: rng.random_range(0..4), cell };
                modified.objects.push(o);
                modified.objects.sort_by_key(|o| o.cell);
                let (c, s, at) = (name_c(&o), SHAPES[o.shape], CELLS[o.cell]);
                vec![
                    format!("a {c} {s} was added at the {at}"),
                    format!("someone added a {c} {s} at the {at}"),
                    format!("there is now a {c} {s} at the {at}"),
                ]
            }
            "remove" => {
                let i = rng.random_range(0..modified.objects.len());
                let o = modified.objects.remove(i);
                let (c, s, at) = (name_c(&o), SHAPES[o.shape], CELLS[o.cell]);
                vec![
                    format!("the {c} {s} at the {at} was removed"),
                    format!("someone removed the {c} {s} at the {at}"),
                    format!("the {c} {s} is gone"),
                ]
            }
            "recolour" => {
                let i = rng.random_range(0..modified.objects.len());
                let old = modified.objects[i];
                let new = (old.colour + rng.random_range(1..4)) % 4;
                modified.objects[i].colour = new;
                let (c, n, s) = (COLOURS[old.colour].0, COLOURS[new].0, SHAPES[old.shape]);
                vec![
                    format!("the {c} {s} turned {n}"),
                    format!("the {s} at the {} is now {n}", CELLS[old.cell]),
                    format!("the {c} {s} was painted {n}"),
                ]
            }
            _ => {
                let free: Vec<usize> = (0..4).filter(|c| !original.objects.iter().any(|o| o.cell == *c)).collect();
                let Some(&cell) = free.choose(rng) else { continue };
                let i = rng.random_range(0..modified.objects.len());
                let o = modified.objects[i];
                modified.objects[i].cell = cell;
                modified.objects.sort_by_key(|o| o.cell);
                let (c, s) = (name_c(&o), SHAPES[o.shape]);
                vec![
                    format!("the {c} {s} moved to the {}", CELLS[cell]),
                    format!("the {c} {s} was moved from the {} to the {}", CELLS[o.cell], CELLS[cell]),
                    format!("someone moved the {c} {s} to the {}", CELLS[cell]),
                ]
            }
        };
        return PairSample { original, modified, kind, captions };
    }
}

/// Every word the world's captions use.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<&str> = vec![
        "a", "an", "and", "at", "the", "was", "added", "someone", "there", "is", "now", "removed", "gone", "turned",
        "painted", "moved", "to", "from", "empty", "grey", "picture", "top", "bottom", "left", "right",
    ];
    words.extend(SHAPES);
    words.extend(COLOURS.iter().map(|c| c.0));
    words.sort_unstable();
    words.dedup();
    words.into_iter().map(String::from).collect()
}

/// A word-level tokenizer with OPT's special ids (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, then "\n"
/// as eos 4) that prepends `</s>` as OPT's does.
pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<s>", "<pad>", "</s>", "<unk>", "\n"].iter().enumerate() {
        vocab.insert((*t).to_owned(), i.into());
    }
    for (i, w) in vocabulary().iter().enumerate() {
        vocab.insert(w.clone(), (i + 5).into());
    }
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": true})
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<s>"), special(1, "<pad>"), special(2, "</s>"), special(3, "<unk>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// The BLIP-2 of the synthetic world: 48×48 input, 8 query tokens, a 2-layer OPT.
pub fn tiny_base_config() -> Blip2Config {
    tiny_base_config_for(48)
}

/// [`tiny_base_config`] for `image_size`×`image_size` inputs (8-pixel patches). The demo model
/// uses 64: a pair is stacked into one input, so each image gets half the rows, and at 48 a
/// cell of the 2×2 grid is less than two patches high.
pub fn tiny_base_config_for(image_size: usize) -> Blip2Config {
    let vocab = (vocabulary().len() + 5).next_multiple_of(8);
    serde_json::from_value(serde_json::json!({
        "model_type": "blip-2",
        "num_query_tokens": 8,
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": image_size, "patch_size": 8},
        "qformer_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 128, "cross_attention_frequency": 1, "encoder_hidden_size": 64},
        "text_config": {"vocab_size": vocab, "hidden_size": 96, "num_hidden_layers": 2, "ffn_dim": 192,
                        "num_attention_heads": 4, "max_position_embeddings": 64, "word_embed_proj_dim": 96,
                        "eos_token_id": 2, "bos_token_id": 2, "pad_token_id": 1}
    }))
    .expect("static config")
}

/// A model of `config` with HF's initialisation (normal std 0.02, LayerNorms 1/0, biases 0).
pub fn random_model(config: &Blip2Config, seed: u64, device: &Device) -> anyhow::Result<Blip2Model> {
    let mut model = Blip2Model::new(VarBuilder::zeros(DType::F32, device), config)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, t) in model.named_tensors_mut() {
        let shape = t.shape().clone();
        let is_ln = name.ends_with("layer_norm1.weight")
            || name.ends_with("layer_norm2.weight")
            || name.contains("layernorm.weight")
            || name.ends_with("LayerNorm.weight")
            || name.ends_with("_layer_norm.weight");
        *t = if is_ln {
            Tensor::ones(shape, DType::F32, device)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, device)?
        } else {
            let n = shape.elem_count();
            let normal = rand_distr::Normal::new(0.0f32, 0.02).expect("valid");
            let v: Vec<f32> = (0..n).map(|_| rng.sample(normal)).collect();
            Tensor::from_vec(v, shape, device)?
        };
    }
    model.retie_lm_head();
    Ok(model)
}

/// Makes every weight of `model` a variable (full training).
pub fn make_all_trainable(model: &mut Blip2Model) -> anyhow::Result<Vec<Var>> {
    let mut vars = Vec::new();
    for (_, t) in model.named_tensors_mut() {
        let v = Var::from_tensor(t)?;
        *t = v.as_tensor().clone();
        vars.push(v);
    }
    model.retie_lm_head();
    Ok(vars)
}

/// Pretrains the synthetic base on single-image captions (every weight trained), then saves it as a
/// `save_pretrained`-style checkpoint in `out`.
pub fn pretrain_base(out: &Path, examples: usize, image_size: usize, cfg: &TrainConfig) -> anyhow::Result<TrainReport> {
    let device = Device::Cpu;
    let config = tiny_base_config_for(image_size);
    let mut model = random_model(&config, cfg.seed, &device)?;
    // Where a shape is is half of what a caption says; HF's N(0, 0.02) position embeddings leave
    // the patches nearly indistinguishable at the start and the tiny model learns the text prior
    // first. Start them as 2-D sine/cosine codes instead (as MAE does), then train them as usual.
    for (name, t) in model.named_tensors_mut() {
        if name == "vision_model.embeddings.position_embedding" {
            *t = sincos_2d_positions(t.dims(), &device)?;
        }
    }
    let tokenizer = tokenizer_from_json(&tokenizer_json())?;
    let processor = ImageProcessorConfig::for_image_size(config.vision_config.image_size as u32);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0xdead_beef);
    let make = |n: usize, rng: &mut rand::rngs::StdRng| -> anyhow::Result<Vec<Example>> {
        (0..n)
            .map(|_| {
                let scene = Scene::random(rng, 0, 3);
                let labels = super::loss::encode_labels(&tokenizer, &[&scene.describe()], cfg.max_length, 2)?.remove(0);
                Ok(Example { input: Input::Single(Arc::new(scene.render(rng))), labels })
            })
            .collect()
    };
    let train = make(examples, &mut rng)?;
    let holdout = make((examples / 10).max(8), &mut rng)?;
    let vars = make_all_trainable(&mut model)?;
    let report = super::trainer::train(&model, vars, &train, &holdout, &processor, cfg)?;
    save_checkpoint(&mut model, &config, &processor, out)?;
    std::fs::write(out.join("tokenizer.json"), serde_json::to_string_pretty(&tokenizer_json())?)?;
    std::fs::write(out.join("training_report.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

/// 2-D sine/cosine position codes of shape `dims` = [1, 1 + g², d] (the class token's row zero): the
/// first half of the channels encode the patch row, the second half its column.
fn sincos_2d_positions(dims: &[usize], device: &Device) -> anyhow::Result<Tensor> {
    let (n, d) = (dims[1], dims[2]);
    let g = ((n - 1) as f64).sqrt().round() as usize;
    anyhow::ensure!(g * g + 1 == n && d % 4 == 0, "position embedding {dims:?} is not [1, 1 + g², 4k]");
    let quarter = d / 4;
    let mut v = vec![0f32; n * d];
    for p in 0..g * g {
        let (row, col) = ((p / g) as f64, (p % g) as f64);
        for k in 0..quarter {
            let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
            let base = (p + 1) * d;
            v[base + k] = (row * omega).sin() as f32;
            v[base + quarter + k] = (row * omega).cos() as f32;
            v[base + 2 * quarter + k] = (col * omega).sin() as f32;
            v[base + 3 * quarter + k] = (col * omega).cos() as f32;
        }
    }
    Ok(Tensor::from_vec(v, dims, device)?)
}

/// Parses a tokenizer from its JSON.
pub fn tokenizer_from_json(v: &serde_json::Value) -> anyhow::Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(v)?).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
}

/// Writes `config.json`, `model.safetensors` and `preprocessor_config.json` (HF names and layout).
pub fn save_checkpoint(
    model: &mut Blip2Model,
    config: &Blip2Config,
    processor: &ImageProcessorConfig,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tensors: std::collections::HashMap<String, Tensor> = model
        .named_tensors_mut()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.contiguous()?.detach())))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&tensors, out.join("model.safetensors"))?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config.to_hf_json())?)?;
    let pre = serde_json::json!({
        "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": processor.image_mean, "image_std": processor.image_std,
        "image_processor_type": "BlipImageProcessor", "processor_class": "Blip2Processor",
        "resample": 3, "rescale_factor": processor.rescale_factor,
        "size": {"height": processor.height, "width": processor.width}
    });
    std::fs::write(out.join("preprocessor_config.json"), serde_json::to_string_pretty(&pre)?)?;
    Ok(())
}

/// `n` pair examples with their reference captions (labels from the first phrasing drawn at random).
pub fn pair_dataset(
    n: usize,
    seed: u64,
    tokenizer: &tokenizers::Tokenizer,
    max_length: usize,
    pad_id: u32,
) -> anyhow::Result<Vec<(Example, PairSample)>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let p = random_pair(&mut rng);
            let caption = p.captions.choose(&mut rng).expect("non-empty").clone();
            let labels = super::loss::encode_labels(tokenizer, &[&caption], max_length, pad_id)?.remove(0);
            let ex = Example {
                input: Input::Pair {
                    original: Arc::new(p.original.render(&mut rng)),
                    modified: Arc::new(p.modified.render(&mut rng)),
                },
                labels,
            };
            Ok((ex, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_use_only_the_vocabulary_and_tokenize_without_unk() {
        let tok = tokenizer_from_json(&tokenizer_json()).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let p = random_pair(&mut rng);
            for c in p.captions.iter().chain([&p.original.describe(), &p.modified.describe()]) {
                let ids = tok.encode(c.as_str(), true).unwrap().get_ids().to_vec();
                assert_eq!(ids[0], 2, "bos first");
                assert!(!ids.contains(&3), "unknown word in {c:?}");
                assert_eq!(tok.decode(&ids, true).unwrap(), *c);
            }
            assert_ne!(p.original, p.modified);
        }
        let cfg = tiny_base_config();
        assert!(cfg.text_config.vocab_size >= vocabulary().len() + 5);
        cfg.validate().unwrap();
    }
}
