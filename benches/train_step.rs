//! One LoRA training step (forward with labels, backward, AdamW) of our candle BLIP2IDC vs PyTorch +
//! PEFT 0.6.2 on the same checkpoint and machine, in the same run: step time and peak memory.
//!
//! ```text
//! cargo bench --bench train_step -- --model DIR [--batch B] [--steps N] [--threads T] [--python PATH] [--rounds R]
//!     [--dtype f32|bf16] [--device cpu|cuda] [--json-out FILE] [--no-reference]
//! ```
//! Both sides do what the authors' loop does per batch: `model.train()` (LoRA dropout 0.05, Q-Former
//! and OPT dropout 0.1), a fresh BLIP2IDC LoRA (r 8, alpha 16, f32 whatever the base's dtype), AdamW
//! (lr 5e-5, wd 0.01), labels of length 30, one untimed warm-up step then N timed steps on one seeded
//! batch. Each side runs in its own process (ours: this binary with `--child`; theirs:
//! `benches/train_reference.py`); peak RSS is the process's VmHWM. On `--device cuda` (a binary built
//! with `--features cuda`) the GPU memory is measured the same way for both sides, from outside: the
//! device's used memory (`nvidia-smi`, every 50 ms) above what was in use before the side started,
//! CUDA context included. `--rounds R` alternates the two sides R times and keeps each side's fastest
//! round (for machines whose speed drifts). Without `--bench` (as `cargo test --benches` runs it) it
//! does nothing.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

mod common;
use common::{arg, num, peak_rss, run_side};

use std::process::Command;
use std::time::Instant;

use blip2idc::model::loader::{dtype, open_device};
use blip2idc::model::lora::AdapterConfig;
use blip2idc::model::ops::{Mode, TrainFlags};
use blip2idc::model::{Blip2Idc, LoadOptions};
use blip2idc::train::lora::LoraParams;
use blip2idc::train::loss::{caption_loss, PadMasking};
use blip2idc::train::optim::{AdamW, AdamWConfig};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn child() -> anyhow::Result<()> {
    let (batch, steps, len) = (num("--batch", 2), num("--steps", 3), num("--max-length", 30));
    let device = open_device(arg("--device").unwrap_or_else(|| "cpu".into()).parse().map_err(anyhow::Error::msg)?)?;
    let t = Instant::now();
    let mut m = Blip2Idc::load(&LoadOptions {
        checkpoint: arg("--model").expect("--model"),
        adapter: None,
        dtype: dtype(arg("--dtype").unwrap_or_else(|| "f32".into()).parse().map_err(anyhow::Error::msg)?),
        device: device.clone(),
        merge_adapter: false,
    })?;
    let params = LoraParams::init(&mut m.model, AdapterConfig::blip2idc_default("bench"), 0)?;
    let load_s = t.elapsed().as_secs_f64();
    let s = m.processor.height as usize;
    let vocab = m.model.config.text_config.vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let pv: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.random_range(-1.8f32..2.1)).collect();
    let pv = Tensor::from_vec(pv, (batch, 3, s, s), &device)?;
    let labels: Vec<Vec<u32>> =
        (0..batch).map(|_| std::iter::once(2).chain((1..len).map(|_| rng.random_range(4..vocab))).collect()).collect();
    let mut opt = AdamW::new(params.vars(), AdamWConfig { lr: 5e-5, weight_decay: 0.01, ..Default::default() })?;
    blip2idc::model::ops::seed_dropout(0);
    let mode = Mode::Train(TrainFlags { lora_dropout: true, base_dropout: true });
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for step in 0..=steps {
        let t = Instant::now();
        let loss = caption_loss(&m.model, &pv, &labels, mode, PadMasking::Count, 2)?;
        opt.step(&loss.backward()?)?;
        losses.push(loss.to_scalar::<f32>()?);
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        json!({"impl": "candle", "step_s": times[times.len() / 2], "steps": steps, "batch": batch,
               "peak_rss_bytes": peak_rss(), "trainable_params": params.num_params(), "load_s": load_s,
               "losses": losses, "threads": std::env::var("RAYON_NUM_THREADS").ok()})
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
    let (batch, steps) = (num("--batch", 2), num("--steps", 3));
    let threads = num("--threads", std::thread::available_parallelism().map_or(2, |n| n.get()));
    let python = arg("--python").unwrap_or_else(|| "python3".into());
    let (dtype, device) =
        (arg("--dtype").unwrap_or_else(|| "f32".into()), arg("--device").unwrap_or_else(|| "cpu".into()));
    let gpu = common::gpu_index(&device)?;
    let common = [
        "--model".to_owned(),
        model,
        "--batch".into(),
        batch.to_string(),
        "--steps".into(),
        steps.to_string(),
        "--dtype".into(),
        dtype.clone(),
        "--device".into(),
        device.clone(),
    ];
    let rounds = num("--rounds", 1).max(1);
    let gemm = common::cpu_gemm()?;
    let script = common::repo_file("benches/train_reference.py");
    let (mut ours, mut theirs): (Option<Value>, Option<Value>) = (None, None);
    // With --rounds N the two sides alternate N times and each keeps its fastest round: on a shared
    // machine whose speed drifts, noise only ever adds time.
    let faster = |best: Option<Value>, new: Value| match best {
        Some(b) if b["step_s"].as_f64() <= new["step_s"].as_f64() => Some(b),
        _ => Some(new),
    };
    for round in 1..=rounds {
        eprintln!(
            "round {round}/{rounds}: candle, one LoRA step, batch {batch}, {dtype} on {device}, {threads} threads; \
             CPU GEMM: {gemm}"
        );
        let o = run_side(
            Command::new(std::env::current_exe()?)
                .arg("--child")
                .args(&common)
                .env("RAYON_NUM_THREADS", threads.to_string()),
            "our run",
            gpu.as_deref(),
        )?;
        eprintln!("round {round}/{rounds}: pytorch + peft, benches/train_reference.py via {python}");
        let t = if common::no_reference() {
            json!({"impl": "pytorch", "skipped": "--no-reference"})
        } else {
            run_side(
                Command::new(&python).arg(&script).args(&common).args(["--threads", &threads.to_string(), "--json"]),
                "the reference run",
                gpu.as_deref(),
            )?
        };
        let secs = |v: &Value| v["step_s"].as_f64().unwrap_or(f64::NAN);
        eprintln!("round {round}/{rounds}: candle {:.3} s, pytorch {:.3} s", secs(&o), secs(&t));
        ours = faster(ours, o);
        theirs = faster(theirs, t);
    }
    let (ours, theirs) = (ours.expect("one round"), theirs.expect("one round"));
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    for (name, v) in [("candle", &ours), ("pytorch", &theirs)] {
        println!(
            "{name:>8}: step {:.3} s (median of {}), peak RSS {:.3} GiB, {} trainable",
            f(v, "step_s"),
            v["steps"],
            f(v, "peak_rss_bytes") / (1u64 << 30) as f64,
            v["trainable_params"]
        );
    }
    println!("ratio step time candle / pytorch: {:.2}", f(&ours, "step_s") / f(&theirs, "step_s"));
    println!("ratio peak memory candle / pytorch: {:.2}", f(&ours, "peak_rss_bytes") / f(&theirs, "peak_rss_bytes"));
    if gpu.is_some() {
        let gib = |v: &Value| f(v, "gpu_peak_bytes") / (1u64 << 30) as f64;
        println!("GPU memory (device used above idle): candle {:.3} GiB, pytorch {:.3} GiB", gib(&ours), gib(&theirs));
        println!("ratio peak GPU memory candle / pytorch: {:.2}", gib(&ours) / gib(&theirs));
    }
    common::json_out(&json!({"step": "train_step", "batch": batch, "dtype": dtype, "device": device,
                             "ours": ours, "reference": theirs,
                             "time_ratio": f(&ours, "step_s") / f(&theirs, "step_s"),
                             "memory_ratio": common::memory_ratio(&ours, &theirs)}))?;
    Ok(())
}
