//! Captioning throughput and peak memory: our candle BLIP2IDC vs transformers 4.35 + PEFT (PyTorch)
//! on the same machine, in the same run, on the same pixel values.
//!
//! ```text
//! cargo bench --bench model -- --model DIR [--adapter DIR] [--pairs N] [--batch B] [--max-new-tokens 77]
//!     [--threads T] [--dtype f32|bf16] [--device cpu|cuda] [--python PATH] [--warmup-tokens W]
//!     [--engine fixed|continuous] [--json-out FILE] [--no-reference]
//! ```
//! `--engine fixed` (default): `generate_greedy` on chunks of `--batch` pairs, as transformers'
//! `generate` is called; `continuous`: at most `--batch` rows decode at once and queued pairs are
//! prefilled into the batch once half its rows are free (`model::engine`, what `model.max_running`
//! runs in the service). On `--device cuda` both sides' GPU memory is also sampled from outside with
//! nvidia-smi (used memory above idle, CUDA context included). `--json-out` writes both sides and the
//! ratios as one JSON object (what `deploy/cuda/device-check.sh` collects).
//! Each side runs in its own process, one after the other (two 2.7B models do not fit in memory at
//! once): ours is this binary re-executed with `--child`; the reference is `benches/model_reference.py`
//! (needs torch, transformers 4.35, peft 0.6.2: `benches/requirements-reference.txt`; `--python` points
//! at that interpreter, default `python3`). Both report pairs/s over the timed `generate` calls (after
//! one warm-up batch) and the process's peak RSS; this prints both and the ratios.
//! Without `--bench` (as `cargo test --benches` runs it) it does nothing.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

mod common;
use common::{arg, num, peak_rss, run_side};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use blip2idc::model::loader::{dtype, open_device};
use blip2idc::model::{Blip2Idc, LoadOptions};
use serde_json::{json, Value};

/// Our side, in its own process: prints one JSON line.
fn child() -> anyhow::Result<()> {
    let model_dir = arg("--model").expect("--model");
    let pairs = num("--pairs", 8);
    let batch = num("--batch", 1);
    let max_new = num("--max-new-tokens", 77);
    let warmup = num("--warmup-tokens", max_new);
    let pixels = PathBuf::from(arg("--pixels").expect("--pixels"));
    let t = Instant::now();
    let model = Blip2Idc::load(&LoadOptions {
        checkpoint: model_dir,
        adapter: arg("--adapter").map(PathBuf::from),
        dtype: dtype(arg("--dtype").unwrap_or_else(|| "f32".into()).parse().map_err(anyhow::Error::msg)?),
        device: open_device(arg("--device").unwrap_or_else(|| "cpu".into()).parse().map_err(anyhow::Error::msg)?)?,
        merge_adapter: true,
    })?;
    let load_s = t.elapsed().as_secs_f64();
    let s = model.processor.height as usize;
    let raw = std::fs::read(&pixels)?;
    let floats: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let per = 3 * s * s;
    anyhow::ensure!(floats.len() == pairs * per, "pixel file holds {} floats, expected {}", floats.len(), pairs * per);
    let items: Vec<&[f32]> = floats.chunks(per).collect();
    let eos = model.eos_token_ids.clone();
    let generate = |chunk: &[&[f32]], n: usize| -> anyhow::Result<usize> {
        let pv = model.pixel_batch(chunk)?;
        let ids = model.model.generate_greedy(&pv, n, &eos)?;
        // Tokens computed: generated ids plus the eos step where a row stopped early.
        Ok(ids.iter().map(|r| if r.len() < n { r.len() + 1 } else { r.len() }).sum())
    };
    let continuous = arg("--engine").as_deref() == Some("continuous");
    let t = Instant::now();
    generate(&items[..batch.min(pairs)], warmup)?;
    let warmup_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tokens = 0;
    if continuous {
        // Tokens computed, as `generate` counts them: the ids plus the eos step of a row that stopped.
        let mut count = |f: blip2idc::model::engine::Finished| {
            tokens += if f.token_ids.len() < max_new { f.token_ids.len() + 1 } else { f.token_ids.len() };
        };
        let limits = vec![max_new; items.len()];
        common::decode_continuously(&model, &items, &limits, batch, (batch / 2).max(1), &mut count)?;
    } else {
        for chunk in items.chunks(batch) {
            tokens += generate(chunk, max_new)?;
        }
    }
    let generate_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"impl": "candle", "pairs": pairs, "batch": batch, "pairs_per_s": pairs as f64 / generate_s,
               "generate_s": generate_s, "tokens": tokens, "load_s": load_s, "warmup_s": warmup_s,
               "peak_rss_bytes": peak_rss(), "threads": std::env::var("RAYON_NUM_THREADS").ok(),
               "engine": if continuous { "continuous" } else { "fixed" }})
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    blip2idc::setup_process();
    if std::env::args().any(|a| a == "--child") {
        return child();
    }
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let model = arg("--model").ok_or_else(|| anyhow::anyhow!("--model DIR is required"))?;
    let pairs = num("--pairs", 8);
    let batch = num("--batch", 1);
    let threads = num("--threads", std::thread::available_parallelism().map_or(2, |n| n.get()));
    let max_new = num("--max-new-tokens", 77);
    let warmup = num("--warmup-tokens", max_new);
    let dtype = arg("--dtype").unwrap_or_else(|| "f32".into());
    let device = arg("--device").unwrap_or_else(|| "cpu".into());
    let python = arg("--python").unwrap_or_else(|| "python3".into());

    // The shared input: synthetic pairs preprocessed by our (PIL-exact) preprocessing.
    let cfg = blip2idc::model::config::Blip2Config::from_file(&Path::new(&model).join("config.json"))?;
    let proc = blip2idc::model::preprocess::ImageProcessorConfig::for_image_size(cfg.vision_config.image_size as u32);
    let mut raw = Vec::new();
    for i in 0..pairs as u64 {
        let (a, b, _) = blip2idc_dev::synthetic_pair(i, 256);
        for v in proc.pixel_values(&blip2idc::model::preprocess::stack_pair(&a, &b)) {
            raw.extend_from_slice(&v.to_le_bytes());
        }
    }
    let dir = tempfile::tempdir()?;
    let pixels = dir.path().join("pixels.f32");
    std::fs::write(&pixels, raw)?;

    let common = [
        "--model".to_owned(),
        model.clone(),
        "--pairs".into(),
        pairs.to_string(),
        "--batch".into(),
        batch.to_string(),
        "--max-new-tokens".into(),
        max_new.to_string(),
        "--pixels".into(),
        pixels.to_string_lossy().into_owned(),
        "--dtype".into(),
        dtype.clone(),
    ];
    let adapter: Vec<String> = arg("--adapter").map(|a| vec!["--adapter".into(), a]).unwrap_or_default();
    let gemm = common::cpu_gemm()?;
    eprintln!("candle: {pairs} pairs, batch {batch}, {threads} threads, {dtype} on {device}; CPU GEMM: {gemm}");
    let gpu = common::gpu_index(&device)?;
    let engine = arg("--engine").unwrap_or_else(|| "fixed".into());
    anyhow::ensure!(engine == "fixed" || engine == "continuous", "--engine is fixed or continuous, not {engine}");
    let ours = run_side(
        Command::new(std::env::current_exe()?)
            .arg("--child")
            .args(&common)
            .args(&adapter)
            .args(["--device", &device, "--warmup-tokens", &warmup.to_string(), "--engine", &engine])
            .env("RAYON_NUM_THREADS", threads.to_string()),
        "our run",
        gpu.as_deref(),
    )?;

    let script = common::repo_file("benches/model_reference.py");
    let theirs = if common::no_reference() {
        eprintln!("pytorch: skipped (--no-reference)");
        json!({"impl": "pytorch", "skipped": "--no-reference"})
    } else {
        eprintln!("pytorch: same inputs via {python} benches/model_reference.py");
        run_side(
            Command::new(&python).arg(script).args(&common).args(&adapter).args([
                "--threads",
                &threads.to_string(),
                "--image-size",
                &cfg.vision_config.image_size.to_string(),
                "--warmup-max-new-tokens",
                &warmup.to_string(),
                "--json",
                "--device",
                &device,
            ]),
            "the reference run",
            gpu.as_deref(),
        )?
    };

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for (name, v) in [("candle", &ours), ("pytorch", &theirs)] {
        println!(
            "{name:>8}: {:.4} pairs/s  ({} tokens in {:.2} s, load {:.1} s)  peak RSS {:.2} GiB",
            f(v, "pairs_per_s"),
            v["tokens"],
            f(v, "generate_s"),
            f(v, "load_s"),
            f(v, "peak_rss_bytes") / (1u64 << 30) as f64
        );
    }
    println!("ratio pairs/s candle / pytorch: {:.2}", f(&ours, "pairs_per_s") / f(&theirs, "pairs_per_s"));
    println!("ratio peak memory candle / pytorch: {:.2}", f(&ours, "peak_rss_bytes") / f(&theirs, "peak_rss_bytes"));
    if gpu.is_some() {
        let gib = |v: &Value| f(v, "gpu_peak_bytes") / (1u64 << 30) as f64;
        println!("GPU memory (device used above idle): candle {:.3} GiB, pytorch {:.3} GiB", gib(&ours), gib(&theirs));
    }
    common::json_out(&json!({"step": "caption", "pairs": pairs, "batch": batch, "dtype": dtype, "device": device,
                             "engine": engine, "ours": ours, "reference": theirs,
                             "speed_ratio": f(&ours, "pairs_per_s") / f(&theirs, "pairs_per_s"),
                             "memory_ratio": common::memory_ratio(&ours, &theirs)}))?;
    Ok(())
}
