//! Finding a checkpoint's files: a local `save_pretrained` directory, or a hub id resolved through the
//! local HF cache (`HF_HOME`) and downloaded (with a progress bar) when the network allows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};

use crate::config::{DeviceSpec, Dtype};

/// The files of one checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointFiles {
    /// What the user named (a directory or a hub id).
    pub source: String,
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
    /// `tokenizer_config.json` (for `clean_up_tokenization_spaces`).
    pub tokenizer_config: Option<PathBuf>,
    pub preprocessor: Option<PathBuf>,
    /// The directory carries a `RANDOM_WEIGHTS` marker: its captions mean nothing.
    pub random_weights: bool,
}

/// Marker file of checkpoints whose weights are random (test and quickstart models).
pub const RANDOM_MARKER: &str = "RANDOM_WEIGHTS";

/// Resolves `spec` (directory or hub id such as `Salesforce/blip2-opt-2.7b`).
pub fn resolve(spec: &str) -> anyhow::Result<CheckpointFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return from_dir(spec, path);
    }
    if path.exists() {
        bail!("{spec} is a file; expected a checkpoint directory (config.json, *.safetensors, tokenizer.json)");
    }
    let looks_like_hub_id = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if !looks_like_hub_id {
        bail!("checkpoint {spec:?}: no such directory (and not a hub id like Salesforce/blip2-opt-2.7b)");
    }
    from_hub(spec)
}

fn from_dir(spec: &str, dir: &Path) -> anyhow::Result<CheckpointFiles> {
    let need = |name: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        anyhow::ensure!(p.exists(), "checkpoint {}: {name} is missing", dir.display());
        Ok(p)
    };
    let config = need("config.json")?;
    let tokenizer = need("tokenizer.json")?;
    let index = dir.join("model.safetensors.index.json");
    let weights = if index.exists() {
        shards_of(&index)?.into_iter().map(|f| dir.join(f)).collect()
    } else {
        vec![need("model.safetensors")
            .context("(PyTorch .bin checkpoints are not supported: re-save with safe_serialization=True)")?]
    };
    for w in &weights {
        anyhow::ensure!(w.exists(), "checkpoint {}: shard {} is missing", dir.display(), w.display());
    }
    let pre = dir.join("preprocessor_config.json");
    let tok_cfg = dir.join("tokenizer_config.json");
    Ok(CheckpointFiles {
        source: spec.to_owned(),
        config,
        weights,
        tokenizer,
        tokenizer_config: tok_cfg.exists().then_some(tok_cfg),
        preprocessor: pre.exists().then_some(pre),
        random_weights: dir.join(RANDOM_MARKER).exists(),
    })
}

/// Shard file names listed in `model.safetensors.index.json`, in order, deduplicated.
pub fn shards_of(index: &Path) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(index)?)
        .with_context(|| format!("{} is not JSON", index.display()))?;
    let map = v["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index.display()))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn from_hub(id: &str) -> anyhow::Result<CheckpointFiles> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_owned());
    let api = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build();
    let fetch = |name: &str| -> anyhow::Result<PathBuf> {
        if let Some(p) = cached.get(name) {
            return Ok(p);
        }
        let api = api.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        api.model(id.to_owned()).get(name).map_err(|e| {
            anyhow::anyhow!(
                "{id}/{name} is not in the local HF cache ({}) and downloading it failed: {e}. \
                 Set HF_HOME to a cache that has it, or pass a local checkpoint directory",
                cache.path().display()
            )
        })
    };
    let config = fetch("config.json")?;
    let tokenizer = fetch("tokenizer.json")?;
    let weights = match fetch("model.safetensors.index.json") {
        Ok(index) => shards_of(&index)?.iter().map(|f| fetch(f)).collect::<anyhow::Result<_>>()?,
        Err(_) => vec![fetch("model.safetensors")?],
    };
    Ok(CheckpointFiles {
        source: id.to_owned(),
        config,
        weights,
        tokenizer,
        tokenizer_config: fetch("tokenizer_config.json").ok(),
        preprocessor: fetch("preprocessor_config.json").ok(),
        random_weights: false,
    })
}

/// candle's dtype for `model.dtype`.
pub fn dtype(d: Dtype) -> DType {
    match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
    }
}

/// Whether this binary can open `d` at all (a CUDA device needs a build with `--features cuda`):
/// checked at start, before the model is loaded on its thread.
pub fn check_device(d: DeviceSpec) -> anyhow::Result<()> {
    if d != DeviceSpec::Cpu && !candle_core::utils::cuda_is_available() {
        bail!("device {d}: this binary was built without CUDA; build it with `--features cuda` (deploy/cuda/build.sh)");
    }
    Ok(())
}

/// Opens the device `model.device` names.
pub fn open_device(d: DeviceSpec) -> anyhow::Result<Device> {
    check_device(d)?;
    match d {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => {
            Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
        }
    }
}

/// A short stable fingerprint of files (FNV-1a 64 over their bytes), for model version names.
pub fn fingerprint(paths: &[PathBuf]) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    for p in paths {
        bytes.extend(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(format!("{:016x}", fnv1a(&bytes))[..10].to_owned())
}

/// FNV-1a, 64 bits: a stable (not cryptographic) hash.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
