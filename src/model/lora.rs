//! PEFT LoRA adapters: `adapter_config.json` + `adapter_model.safetensors` or `adapter_model.bin`.
//!
//! Target matching follows PEFT 0.6 exactly: with a list, a module is adapted when its name equals a
//! target or ends with `"." + target`; with a string, when the regex full-matches the name. So with the
//! BLIP2IDC list (`qformer.encoder.layer.N.crossattention.attention.query`, `value`, `key`, `qkv`,
//! `q_proj`, `k_proj`, `v_proj`) the Q-Former *self*-attention query is not adapted.
//!
//! Saved keys are `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// A LoRA branch: `A` [r, in], `B` [out, r], both f32.
#[derive(Clone, Debug)]
pub struct LoraBranch {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraBranch {
    /// `scale · B · A` [out, in] in f32.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// `target_modules`: a list of suffixes, or one regex.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

/// The fields of PEFT's `LoraConfig` that matter here (others are kept when re-saving).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AdapterConfig {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default = "peft_type")]
    pub peft_type: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, f64>>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}
fn peft_type() -> String {
    "LORA".into()
}

/// The targets the BLIP2IDC authors used (every released adapter).
pub fn blip2idc_targets() -> Vec<String> {
    let mut t: Vec<String> =
        (0..12).map(|n| format!("qformer.encoder.layer.{n}.crossattention.attention.query")).collect();
    t.extend(["value", "key", "qkv", "q_proj", "k_proj", "v_proj"].map(String::from));
    t
}

impl AdapterConfig {
    /// BLIP2IDC's LoRA: r = 8, alpha = 16, dropout 0.05, the authors' target list.
    pub fn blip2idc_default(base_model: &str) -> AdapterConfig {
        AdapterConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: TargetModules::List(blip2idc_targets()),
            fan_in_fan_out: false,
            bias: "none".into(),
            peft_type: "LORA".into(),
            base_model_name_or_path: Some(base_model.to_owned()),
            task_type: None,
            layers_to_transform: None,
            rank_pattern: Some(BTreeMap::new()),
            alpha_pattern: Some(BTreeMap::new()),
            other: serde_json::Map::new(),
        }
    }

    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    fn check_supported(&self) -> anyhow::Result<()> {
        ensure!(self.peft_type.eq_ignore_ascii_case("LORA"), "peft_type {:?} is not LORA", self.peft_type);
        ensure!(self.r > 0, "r must be > 0");
        ensure!(self.bias == "none", "bias {:?} is not supported (only \"none\", as BLIP2IDC)", self.bias);
        ensure!(self.layers_to_transform.is_none(), "layers_to_transform is not supported");
        ensure!(
            self.rank_pattern.as_ref().is_none_or(|p| p.is_empty())
                && self.alpha_pattern.as_ref().is_none_or(|p| p.is_empty()),
            "rank_pattern/alpha_pattern are not supported"
        );
        Ok(())
    }
}

/// Compiled PEFT target matcher.
#[derive(Clone, Debug)]
pub enum TargetMatcher {
    List(Vec<String>),
    Regex(regex::Regex),
}

impl TargetMatcher {
    pub fn new(t: &TargetModules) -> anyhow::Result<TargetMatcher> {
        Ok(match t {
            TargetModules::List(v) => TargetMatcher::List(v.clone()),
            TargetModules::Regex(r) => TargetMatcher::Regex(
                regex::Regex::new(&format!("^(?:{r})$")).with_context(|| format!("target_modules regex {r:?}"))?,
            ),
        })
    }

    /// PEFT's `check_target_module_exists`.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            TargetMatcher::List(targets) => targets.iter().any(|t| {
                module == t || (module.ends_with(t.as_str()) && module[..module.len() - t.len()].ends_with('.'))
            }),
            TargetMatcher::Regex(r) => r.is_match(module),
        }
    }
}

/// A loaded adapter: config plus `(A, B)` per adapted module (f32).
#[derive(Clone, Debug)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub matcher: TargetMatcher,
    pub weights: HashMap<String, (Tensor, Tensor)>,
    /// Where it was loaded from, if from disk.
    pub source: Option<PathBuf>,
}

const PREFIX: &str = "base_model.model.";

/// The largest LoRA rank accepted from a file.
const MAX_RANK: usize = 4096;

/// In and out dimensions of every linear of a model, by HF module name: what an adapter must fit.
pub type LinearShapes = HashMap<String, (usize, usize)>;

/// `base_model.model.<module>.lora_A.weight` → (`module`, is A). PEFT < 0.3 and some tools keep the
/// adapter name (`.lora_A.default.weight`).
fn split_key(key: &str) -> anyhow::Result<(String, bool)> {
    let Some(rest) = key.strip_prefix(PREFIX) else {
        bail!("unexpected key {key:?} in the adapter (expected {PREFIX}<module>.lora_A/B.weight)")
    };
    let rest =
        rest.replace(".lora_A.default.weight", ".lora_A.weight").replace(".lora_B.default.weight", ".lora_B.weight");
    if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        Ok((m.to_owned(), true))
    } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
        Ok((m.to_owned(), false))
    } else {
        bail!("unsupported adapter tensor {key:?} (only lora_A/lora_B weights are supported)")
    }
}

impl Adapter {
    /// Reads an adapter directory for a model whose linears have the given shapes.
    ///
    /// An adapter is untrusted data (it comes from S3): the config is validated, every tensor's name,
    /// dtype and declared shape are read from the file's header and checked against the model's linear
    /// (`A` [r, in], `B` [out, r]) *before* any tensor data is allocated, and the file may not be
    /// larger than such tensors can take. A crafted file is an error, never an abort.
    pub fn load(dir: &Path, device: &Device, shapes: &LinearShapes) -> anyhow::Result<Adapter> {
        let cfg_path = dir.join("adapter_config.json");
        let cfg_len = std::fs::metadata(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?.len();
        ensure!(cfg_len <= 1 << 20, "{} is {cfg_len} bytes: not an adapter config", cfg_path.display());
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: AdapterConfig =
            serde_json::from_str(&text).with_context(|| format!("{} is not a LoRA config", cfg_path.display()))?;
        config.check_supported().with_context(|| cfg_path.display().to_string())?;
        ensure!(
            config.r <= MAX_RANK,
            "{}: r = {} is absurd (at most {MAX_RANK} is accepted)",
            cfg_path.display(),
            config.r
        );
        let st = dir.join("adapter_model.safetensors");
        let bin = dir.join("adapter_model.bin");
        let (path, is_st) = if st.exists() {
            (st, true)
        } else if bin.exists() {
            (bin, false)
        } else {
            bail!("{} has neither adapter_model.safetensors nor adapter_model.bin", dir.display());
        };
        // The most bytes a well-formed adapter of this rank can take: A and B of every linear, f64.
        let bound = shapes.values().map(|(i, o)| (i + o) as u64 * config.r as u64 * 8).sum::<u64>() + (16 << 20);
        let file_len = std::fs::metadata(&path)?.len();
        ensure!(
            file_len <= bound,
            "{} is {file_len} bytes, more than any r = {} adapter of this model can take ({bound})",
            path.display(),
            config.r
        );
        let expected = |key: &str, dims: &[usize]| -> anyhow::Result<()> {
            let (module, is_a) = split_key(key)?;
            let &(in_dim, out_dim) = shapes.get(&module).with_context(|| {
                format!("the adapter has weights for {module}, which is not a linear of this model")
            })?;
            let r = config.r;
            let want = match (is_a, config.fan_in_fan_out) {
                (true, false) => [r, in_dim],
                (false, false) => [out_dim, r],
                (true, true) => [in_dim, r],
                (false, true) => [r, out_dim],
            };
            ensure!(dims == want, "{key}: declared shape {dims:?}, but this model and r = {r} need {want:?}");
            Ok(())
        };
        // A panic inside a third-party parser must not take the process down.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> anyhow::Result<Vec<(String, Tensor)>> {
                if is_st {
                    let reader = super::weights::ShardReader::open(std::slice::from_ref(&path))?;
                    let names = reader.tensor_shapes();
                    for (name, dims) in &names {
                        expected(name, dims)?;
                    }
                    names
                        .into_iter()
                        .map(|(name, _)| Ok((name.clone(), reader.read(&name)?.to_device(device)?)))
                        .collect()
                } else {
                    let pth = candle_core::pickle::PthTensors::new(&path, None).context("not a torch pickle")?;
                    for (name, info) in pth.tensor_infos() {
                        let dims = info.layout.dims();
                        expected(name, dims)?;
                        let elems: usize = dims.iter().product();
                        ensure!(
                            info.layout.start_offset() + elems <= info.storage_size,
                            "{name}: shape {dims:?} needs more than its storage of {} elements",
                            info.storage_size
                        );
                    }
                    let mut out = Vec::new();
                    for name in pth.tensor_infos().keys() {
                        let t = pth.get(name)?.with_context(|| format!("{name} vanished"))?;
                        out.push((name.clone(), t.to_device(device)?));
                    }
                    Ok(out)
                }
            }));
        let tensors = match read {
            Ok(r) => r.with_context(|| format!("reading {}", path.display()))?,
            Err(panic) => {
                bail!("reading {}: the parser panicked: {}", path.display(), crate::error::panic_message(&*panic))
            }
        };
        let mut a_s: HashMap<String, Tensor> = HashMap::new();
        let mut b_s: HashMap<String, Tensor> = HashMap::new();
        for (key, t) in tensors {
            let (module, is_a) = split_key(&key)?;
            let t = t.to_dtype(DType::F32)?;
            if is_a {
                a_s.insert(module, t);
            } else {
                b_s.insert(module, t);
            }
        }
        let mut weights = HashMap::new();
        for (m, a) in a_s {
            let b = b_s.remove(&m).with_context(|| format!("adapter has lora_A but no lora_B for {m}"))?;
            let (ra, _) = a.dims2()?;
            let (_, rb) = b.dims2()?;
            ensure!(ra == config.r && rb == config.r, "{m}: LoRA rank {ra}/{rb} differs from r = {}", config.r);
            weights.insert(m, (a, b));
        }
        if let Some(m) = b_s.keys().next() {
            bail!("adapter has lora_B but no lora_A for {m}");
        }
        let matcher = TargetMatcher::new(&config.target_modules)?;
        Ok(Adapter { config, matcher, weights, source: Some(dir.to_owned()) })
    }

    /// The LoRA branch for `module`, if the adapter targets it. Errors when a targeted linear has no
    /// weights (a mismatched adapter) or the shapes disagree.
    pub fn branch_for(&self, module: &str, in_dim: usize, out_dim: usize) -> anyhow::Result<Option<LoraBranch>> {
        if !self.matcher.matches(module) {
            return Ok(None);
        }
        let (a, b) = self
            .weights
            .get(module)
            .with_context(|| format!("the adapter targets {module} but has no weights for it"))?;
        let (a, b) = if self.config.fan_in_fan_out {
            (a.t()?.contiguous()?, b.t()?.contiguous()?)
        } else {
            (a.clone(), b.clone())
        };
        ensure!(
            a.dims() == [self.config.r, in_dim] && b.dims() == [out_dim, self.config.r],
            "{module}: LoRA shapes A {:?} B {:?} do not fit a {in_dim}→{out_dim} linear",
            a.dims(),
            b.dims()
        );
        Ok(Some(LoraBranch { a, b, scale: self.config.scale(), dropout: self.config.lora_dropout }))
    }

    /// Checks that every module with weights in the file exists and is targeted.
    pub fn check_all_used(&self, used: &[String]) -> anyhow::Result<()> {
        let mut unused: Vec<&String> = self.weights.keys().filter(|k| !used.contains(k)).collect();
        unused.sort();
        ensure!(
            unused.is_empty(),
            "the adapter has weights for {} module(s) the model does not adapt, e.g. {}",
            unused.len(),
            unused[0]
        );
        Ok(())
    }

    /// Writes the adapter in PEFT format (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (m, (a, b)) in &self.weights {
            tensors.insert(format!("{PREFIX}{m}.lora_A.weight"), a.to_dtype(DType::F32)?.contiguous()?);
            tensors.insert(format!("{PREFIX}{m}.lora_B.weight"), b.to_dtype(DType::F32)?.contiguous()?);
        }
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        let mut cfg = serde_json::to_value(&self.config)?;
        cfg["inference_mode"] = serde_json::Value::Bool(true);
        std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_suffix_matching_skips_qformer_self_attention_query() {
        let m = TargetMatcher::new(&TargetModules::List(blip2idc_targets())).unwrap();
        assert!(m.matches("qformer.encoder.layer.0.crossattention.attention.query"));
        assert!(m.matches("qformer.encoder.layer.0.attention.attention.key"));
        assert!(m.matches("qformer.encoder.layer.3.attention.attention.value"));
        assert!(!m.matches("qformer.encoder.layer.0.attention.attention.query"));
        assert!(m.matches("vision_model.encoder.layers.5.self_attn.qkv"));
        assert!(m.matches("language_model.model.decoder.layers.1.self_attn.k_proj"));
        assert!(!m.matches("language_model.model.decoder.layers.1.self_attn.out_proj"));
        // A suffix must start at a module boundary.
        assert!(!m.matches("foo.monkey"));
        assert!(m.matches("key"));
    }

    #[test]
    fn regex_targets_full_match() {
        let m = TargetMatcher::new(&TargetModules::Regex(r".*decoder.*\.(q|v)_proj".into())).unwrap();
        assert!(m.matches("language_model.model.decoder.layers.0.self_attn.q_proj"));
        assert!(!m.matches("language_model.model.decoder.layers.0.self_attn.k_proj"));
        assert!(!m.matches("language_model.model.decoder.layers.0.self_attn.q_proj.x"));
    }
}
