//! Part (a) of the GPU check: the model on a device against the transformers 4.35 + PEFT reference
//! committed in `tests/fixtures/blip2/` (the tiny parity checkpoints `tiny-a` and `tiny-b`, each
//! without and with its LoRA adapter, every fixture pair).
//!
//! ```text
//! cargo bench --bench device_parity -- --bench [--device cpu|cuda] [--fixtures DIR] [--json-out FILE]
//! ```
//! - f32 on the device: greedy ids (batched, and one by one) must equal the reference's one-by-one
//!   ids exactly; first-step logits are reported as max |Δ| against the reference (tolerance 1e-3:
//!   GPU reductions sum in another order than the CPU's).
//! - bf16 on the device: first-step logits within 5 % of the reference logits' largest magnitude (the
//!   tolerance `tests/model_parity.rs` holds the CPU's bf16 to); ids are reported, not required to match
//!   (bf16 rounding can flip a near-tie).
//!
//! Prints one line per check and, last, one JSON object (also written to `--json-out`); exits non-zero
//! when a required check fails. On the CPU (`--device cpu`, the default) it is the dry run of the GPU
//! check, and runs in CI through `tests/device_check.rs`. Without `--bench` it does nothing.

mod common;
use common::arg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip2idc::model::loader::open_device;
use blip2idc::model::ops::Mode;
use blip2idc::model::{Blip2Idc, LoadOptions};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

/// Tolerance of f32 logits on the device against the reference (absolute).
const F32_LOGITS_TOL: f32 = 1e-3;
/// Tolerance of bf16 logits, relative to the reference logits' largest magnitude.
const BF16_LOGITS_REL_TOL: f32 = 0.05;

fn max_abs(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(a.dims() == b.dims(), "shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
}

/// One checkpoint × variant × dtype on `device`.
fn check(dir: &Path, man: &Value, ckpt: &str, variant: &str, dtype: DType, device: &Device) -> anyhow::Result<Value> {
    let exp: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("expected").join(format!("{ckpt}.safetensors")), &Device::Cpu)?;
    let model = Blip2Idc::load(&LoadOptions {
        checkpoint: dir.join(ckpt).to_string_lossy().into_owned(),
        adapter: (variant == "adapter").then(|| dir.join(format!("{ckpt}-adapter"))),
        dtype,
        device: device.clone(),
        merge_adapter: true,
    })?;
    let reference = man["checkpoints"][ckpt]["greedy"][variant]["one_by_one"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("manifest has no greedy ids for {ckpt} {variant}"))?;
    let pvs: Vec<Vec<f32>> = (0..reference.len())
        .map(|i| exp[&format!("pair{i}.pixel_values")].flatten_all()?.to_vec1())
        .collect::<candle_core::Result<_>>()?;
    let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();

    // First-step logits of every pair.
    let (mut logits_diff, mut scale) = (0f32, 0f32);
    let bos = Tensor::new(&[[2u32]], device)?;
    for i in 0..reference.len() {
        let pv = model.pixel_batch(&refs[i..=i])?;
        let got = model.model.forward(&pv, &bos, Mode::Inference)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let want = &exp[&format!("pair{i}.logits.{variant}")];
        logits_diff = logits_diff.max(max_abs(&got, want)?);
        scale = scale.max(want.abs()?.max_all()?.to_scalar::<f32>()?);
    }
    // Greedy ids, batched and one by one.
    let batched = model.caption_pixels(&refs, 77)?;
    let (mut same_batched, mut same_one) = (0, 0);
    for (i, r) in reference.iter().enumerate() {
        let want = ids(&r["token_ids"]);
        same_batched += (batched[i].token_ids == want) as usize;
        same_one += (model.caption_pixels(&refs[i..=i], 77)?[0].token_ids == want) as usize;
    }
    let n = reference.len();
    let (tol, ids_required) = match dtype {
        DType::F32 => (F32_LOGITS_TOL, true),
        _ => (BF16_LOGITS_REL_TOL * scale, false),
    };
    let pass = logits_diff <= tol && (!ids_required || (same_batched == n && same_one == n));
    let dt = format!("{dtype:?}").to_lowercase();
    println!(
        "{:>4} {ckpt} {variant:>7} {dt}: logits max|Δ| {logits_diff:.2e} (tolerance {tol:.2e}), greedy ids equal: \
         batched {same_batched}/{n}, one by one {same_one}/{n}{}",
        if pass { "ok" } else { "FAIL" },
        if ids_required { "" } else { " (reported)" }
    );
    Ok(json!({"checkpoint": ckpt, "variant": variant, "dtype": dt, "pairs": n, "logits_max_abs_diff": logits_diff,
              "logits_scale": scale, "tolerance": tol, "ids_equal_batched": same_batched,
              "ids_equal_one_by_one": same_one, "ids_required": ids_required, "pass": pass}))
}

fn main() -> anyhow::Result<()> {
    blip2idc::setup_process();
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let device_arg = arg("--device").unwrap_or_else(|| "cpu".into());
    let device = open_device(device_arg.parse().map_err(anyhow::Error::msg)?)?;
    let dir = arg("--fixtures")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2"));
    let man: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    let mut checks = Vec::new();
    for ckpt in ["tiny-a", "tiny-b"] {
        for variant in ["base", "adapter"] {
            for dtype in [DType::F32, DType::BF16] {
                checks.push(check(&dir, &man, ckpt, variant, dtype, &device)?);
            }
        }
    }
    let pass = checks.iter().all(|c| c["pass"] == true);
    let out = json!({"step": "parity", "device": device_arg, "reference": man["versions"], "pass": pass,
                     "f32_logits_tolerance": F32_LOGITS_TOL, "bf16_logits_relative_tolerance": BF16_LOGITS_REL_TOL,
                     "checks": checks});
    if let Some(path) = arg("--json-out") {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    println!("{out}");
    anyhow::ensure!(pass, "device parity failed (see the FAIL lines above)");
    Ok(())
}
