//! Continuous batching against today's fixed batches, same model, same pairs, same maximum batch,
//! in the same run (the two alternate `--rounds` times; each keeps its fastest round).
//!
//! ```text
//! cargo bench --bench engine -- --model DIR [--adapter DIR] [--pairs N] [--batch B] [--max-new-tokens T] [--rounds R]
//!     [--lengths MIN-MAX]
//! ```
//! `--lengths MIN-MAX` gives each pair its own token limit, drawn uniformly (seeded) from that range: a
//! spread of caption lengths for checkpoints that never stop on their own (random weights such as
//! the "mid" config of `benches/make_random_checkpoint.py` emit no eos). Both modes honour the same
//! limits (`DecodeBatch::admit_each`).
//! All pairs are queued at the start. Fixed batches: chunks of `--batch` pairs through
//! `generate_greedy`, each pair done when its batch is. Continuous: at most `--batch` rows running;
//! once `--min-admit` rows are free (default half, as the service's captioner thread does), queued
//! pairs are prefilled together and join. Prints pairs/s, the latency
//! of a pair from the start to its caption (p50, p95), and the ratios; checks that both produced the
//! same ids. Inputs: pairs of the synthetic world the demo model learned (`train::synthetic`; its
//! captions vary in length with the edit), preprocessed as the service does. Without `--bench` (as `cargo test --benches` runs it) it does
//! nothing.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

mod common;
use common::{arg, num};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use blip2idc::model::engine::DecodeBatch;
use blip2idc::model::{Blip2Idc, LoadOptions};

/// Pairs/s, each pair's latency, the ids, and the time in prefills (vision + Q-Former + the prompt
/// and first token: the same work in both modes) and in decoding steps (with the rows they ran).
struct Run {
    seconds: f64,
    latencies: Vec<Duration>,
    ids: HashMap<u64, Vec<u32>>,
    prefill_s: f64,
    decode_s: f64,
    row_steps: usize,
    steps: usize,
}

/// Fixed batches: each chunk of `batch` pairs decodes until its last row is done (what
/// `generate_greedy` does), then the next chunk starts.
fn fixed(model: &Blip2Idc, pvs: &[Vec<f32>], batch: usize, limits: &[usize]) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let (mut latencies, mut ids) = (Vec::new(), HashMap::new());
    let (mut prefill_s, mut decode_s, mut row_steps, mut steps) = (0.0, 0.0, 0, 0);
    for (c, chunk) in pvs.chunks(batch).enumerate() {
        let refs: Vec<&[f32]> = chunk.iter().map(|v| v.as_slice()).collect();
        let keys: Vec<u64> = (c * batch..c * batch + chunk.len()).map(|k| k as u64).collect();
        let pv = model.pixel_batch(&refs)?;
        let mut running = DecodeBatch::new(&model.model);
        let chunk_limits = &limits[c * batch..c * batch + chunk.len()];
        let t = Instant::now();
        let mut out = running.admit_each(&model.model, &pv, &keys, chunk_limits, &model.eos_token_ids)?;
        prefill_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        while !running.is_empty() {
            (row_steps, steps) = (row_steps + running.len(), steps + 1);
            out.extend(running.step(&model.model, &model.eos_token_ids)?);
        }
        decode_s += t.elapsed().as_secs_f64();
        for f in out {
            latencies.push(t0.elapsed());
            ids.insert(f.key, f.token_ids);
        }
    }
    Ok(Run { seconds: t0.elapsed().as_secs_f64(), latencies, ids, prefill_s, decode_s, row_steps, steps })
}

fn continuous(model: &Blip2Idc, pvs: &[Vec<f32>], batch: usize, limits: &[usize]) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let (mut latencies, mut ids) = (Vec::new(), HashMap::new());
    let items: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
    let min_admit = num("--min-admit", (batch / 2).max(1));
    let s = common::decode_continuously(model, &items, limits, batch, min_admit, &mut |f| {
        latencies.push(t0.elapsed());
        ids.insert(f.key, f.token_ids);
    })?;
    let (prefill_s, decode_s, row_steps, steps) = (s.prefill_s, s.decode_s, s.row_steps, s.steps);
    Ok(Run { seconds: t0.elapsed().as_secs_f64(), latencies, ids, prefill_s, decode_s, row_steps, steps })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    blip2idc::setup_process();
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let model_dir = arg("--model").ok_or_else(|| anyhow::anyhow!("--model DIR is required"))?;
    let (pairs, batch, rounds) = (num("--pairs", 64), num("--batch", 8), num("--rounds", 3));
    let gemm = common::cpu_gemm()?;
    let model = Blip2Idc::load(&LoadOptions {
        checkpoint: model_dir.clone(),
        adapter: arg("--adapter").map(Into::into),
        dtype: candle_core::DType::F32,
        device: candle_core::Device::Cpu,
        merge_adapter: true,
    })?;
    let max_new = num("--max-new-tokens", 77).min(model.model.max_new_tokens_limit());
    // Pairs of the demo model's synthetic world (its captions end where they should, at lengths
    // that vary with the edit), rendered and preprocessed as the quickstart's.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2024);
    let pvs: Vec<Vec<f32>> = (0..pairs)
        .map(|_| {
            let p = blip2idc::train::synthetic::random_pair(&mut rng);
            let (a, b) = (p.original.render(&mut rng), p.modified.render(&mut rng));
            model.processor.pixel_values(&blip2idc::model::preprocess::stack_pair(&a, &b))
        })
        .collect();
    let limits: Vec<usize> = match arg("--lengths") {
        None => vec![max_new; pairs],
        Some(range) => {
            let (lo, hi) = range
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .filter(|(a, b)| 1 <= *a && a <= b && *b <= max_new)
                .ok_or_else(|| {
                    anyhow::anyhow!("--lengths is MIN-MAX with 1 <= MIN <= MAX <= {max_new}, not {range}")
                })?;
            (0..pairs).map(|_| rand::Rng::random_range(&mut rng, lo..=hi)).collect()
        }
    };
    eprintln!("{model_dir}: {pairs} pairs, batch {batch}, max {max_new} new tokens, {rounds} rounds; CPU GEMM: {gemm}");

    let (mut best_fixed, mut best_cont): (Option<Run>, Option<Run>) = (None, None);
    for _ in 0..rounds {
        let f = fixed(&model, &pvs, batch, &limits)?;
        if best_fixed.as_ref().is_none_or(|b| f.seconds < b.seconds) {
            best_fixed = Some(f);
        }
        let c = continuous(&model, &pvs, batch, &limits)?;
        if best_cont.as_ref().is_none_or(|b| c.seconds < b.seconds) {
            best_cont = Some(c);
        }
    }
    let (f, c) = (best_fixed.expect("a round"), best_cont.expect("a round"));
    anyhow::ensure!(f.ids == c.ids, "continuous batching produced other ids than fixed batches");
    let lengths: Vec<usize> = f.ids.values().map(Vec::len).collect();
    let (min, max) = (lengths.iter().min().unwrap_or(&0), lengths.iter().max().unwrap_or(&0));
    let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
    println!("caption lengths: {min}–{max} tokens, mean {mean:.1}; e.g. {:?}", model.decode(&f.ids[&0])?);
    let mut rows = Vec::new();
    for (name, run) in [("fixed batches", &f), ("continuous", &c)] {
        let mut lat = run.latencies.clone();
        lat.sort();
        let (p50, p95) = (percentile(&lat, 0.5), percentile(&lat, 0.95));
        let rate = pairs as f64 / run.seconds;
        println!(
            "{name:>14}: {rate:8.2} pairs/s   latency p50 {p50:.3} s  p95 {p95:.3} s   prefill {:.2} s, decode {:.2} s \
             ({} steps, {:.2} rows per step)",
            run.prefill_s,
            run.decode_s,
            run.steps,
            run.row_steps as f64 / run.steps.max(1) as f64
        );
        rows.push((rate, p50, p95));
    }
    println!(
        "ratio continuous / fixed: {:.2}x pairs/s, p50 latency {:.2}x, p95 latency {:.2}x (ids identical)",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1,
        rows[1].2 / rows[0].2
    );
    // Prefill is the same work in both modes; continuous batching can only make the decoding steps
    // fuller. If a step cost the same at any row count, full steps would take this long:
    let full = f.row_steps as f64 / batch as f64 * (f.decode_s / f.steps.max(1) as f64);
    println!(
        "fixed batches: prefill {:.0}% of the time, {:.2} rows per decoding step; upper bound for continuous \
         batching (every step full, a step's cost independent of its rows): {:.2}x",
        100.0 * f.prefill_s / f.seconds,
        f.row_steps as f64 / f.steps.max(1) as f64,
        f.seconds / (f.seconds - f.decode_s + full)
    );
    Ok(())
}
