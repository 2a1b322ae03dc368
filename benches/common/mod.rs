//! Helpers shared by the benchmarks: command-line flags, peak memory, child-process JSON.
#![allow(dead_code)]

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A file of this repository: under `$BLIP2IDC_REPO` when set (a binary carried to another machine,
/// as `deploy/cuda/device-check.sh` runs them), else under the checkout it was built from.
pub fn repo_file(relative: &str) -> std::path::PathBuf {
    let root = std::env::var_os("BLIP2IDC_REPO").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&root).join(relative)
}

/// Whether the reference (PyTorch) side is skipped: `--no-reference` (the device check's dry run on a
/// machine without torch).
pub fn no_reference() -> bool {
    std::env::args().any(|a| a == "--no-reference")
}

/// A numeric flag with a default.
pub fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// This process's peak resident set (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Runs `cmd` (one side of a benchmark) and returns the last line of its stdout that is a JSON object;
/// a failed run is an error carrying its stderr.
pub fn run_json(cmd: &mut std::process::Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    let line =
        s.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or_else(|| anyhow::anyhow!("no JSON in:\n{s}"))?;
    Ok(serde_json::from_str(line)?)
}

/// The CPU GEMM the child runs will use (`BLIP2IDC_MODEL__BLAS`, default `auto`: OpenBLAS when
/// installed); they inherit the variable.
pub fn cpu_gemm() -> anyhow::Result<String> {
    blip2idc::model::blas::configure(&blip2idc::model::blas::from_env())
}

/// The GPU's index for nvidia-smi when `device` (as `--device` takes it) is a CUDA device.
pub fn gpu_index(device: &str) -> anyhow::Result<Option<String>> {
    use blip2idc::config::DeviceSpec;
    Ok(match device.parse::<DeviceSpec>().map_err(anyhow::Error::msg)? {
        DeviceSpec::Cpu => None,
        DeviceSpec::Cuda(n) => Some(n.to_string()),
    })
}

/// Peak memory of `ours` over `theirs`: device memory where both sides measured it, else peak RSS
/// (NaN without a reference run).
pub fn memory_ratio(ours: &serde_json::Value, theirs: &serde_json::Value) -> f64 {
    let key = if ours.get("gpu_peak_bytes").is_some() { "gpu_peak_bytes" } else { "peak_rss_bytes" };
    ours[key].as_f64().unwrap_or(f64::NAN) / theirs[key].as_f64().unwrap_or(f64::NAN)
}

/// Writes a benchmark's summary to `--json-out FILE` when given (what `deploy/cuda/device-check.sh`
/// collects into its table).
pub fn json_out(summary: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = arg("--json-out") {
        std::fs::write(&path, serde_json::to_string_pretty(summary)?)
            .map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?;
    }
    Ok(())
}

/// Runs one side; on a GPU (`gpu`: its nvidia-smi index) also samples the device's used memory from
/// outside while it runs, the same way for both sides, and adds the peak above the memory in use
/// before it started as `gpu_peak_bytes`.
pub fn run_side(cmd: &mut std::process::Command, what: &str, gpu: Option<&str>) -> anyhow::Result<serde_json::Value> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let Some(gpu) = gpu else { return run_json(cmd, what) };
    let idle = gpu_used_bytes(gpu)?;
    let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(idle)));
    let sampler = {
        let (stop, peak, gpu) = (stop.clone(), peak.clone(), gpu.to_owned());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(used) = gpu_used_bytes(&gpu) {
                    peak.fetch_max(used, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let result = run_json(cmd, what);
    stop.store(true, Ordering::Relaxed);
    sampler.join().map_err(|_| anyhow::anyhow!("the GPU memory sampler panicked"))?;
    let mut v = result?;
    v["gpu_peak_bytes"] = serde_json::json!(peak.load(Ordering::Relaxed).saturating_sub(idle));
    Ok(v)
}

/// The used memory of GPU `index`, from nvidia-smi.
pub fn gpu_used_bytes(index: &str) -> anyhow::Result<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id", index])
        .output()
        .map_err(|e| anyhow::anyhow!("nvidia-smi (needed to measure GPU memory): {e}"))?;
    anyhow::ensure!(out.status.success(), "nvidia-smi failed: {}", String::from_utf8_lossy(&out.stderr));
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(mib << 20)
}

/// Time and work of one continuous-batching run ([`decode_continuously`]).
#[derive(Default)]
pub struct Schedule {
    /// Seconds in admissions (vision + Q-Former + prompt + first token).
    pub prefill_s: f64,
    /// Seconds in decoding steps.
    pub decode_s: f64,
    /// Decoding steps, and rows summed over them.
    pub steps: usize,
    pub row_steps: usize,
}

/// Continuous batching over `items` in order (`limits[i]`: pair i's token limit): at most `max_rows`
/// decode at once; queued pairs are prefilled together once `min_admit` rows are free (or nothing
/// runs), as the service's captioner thread does. `done` gets each finished pair as it finishes.
pub fn decode_continuously(
    model: &blip2idc::model::Blip2Idc,
    items: &[&[f32]],
    limits: &[usize],
    max_rows: usize,
    min_admit: usize,
    done: &mut dyn FnMut(blip2idc::model::engine::Finished),
) -> anyhow::Result<Schedule> {
    use std::time::Instant;
    let mut queue: std::collections::VecDeque<u64> = (0..items.len() as u64).collect();
    let mut running = blip2idc::model::engine::DecodeBatch::new(&model.model);
    let mut s = Schedule::default();
    while !queue.is_empty() || !running.is_empty() {
        let room = max_rows.saturating_sub(running.len()).min(queue.len());
        if room > 0 && (room >= min_admit.min(queue.len()).max(1) || running.is_empty()) {
            let keys: Vec<u64> = queue.drain(..room).collect();
            let chunk: Vec<&[f32]> = keys.iter().map(|&k| items[k as usize]).collect();
            let key_limits: Vec<usize> = keys.iter().map(|&k| limits[k as usize]).collect();
            let pv = model.pixel_batch(&chunk)?;
            let t = Instant::now();
            let finished = running.admit_each(&model.model, &pv, &keys, &key_limits, &model.eos_token_ids)?;
            s.prefill_s += t.elapsed().as_secs_f64();
            finished.into_iter().for_each(&mut *done);
        }
        if running.is_empty() {
            continue;
        }
        (s.row_steps, s.steps) = (s.row_steps + running.len(), s.steps + 1);
        let t = Instant::now();
        let finished = running.step(&model.model, &model.eos_token_ids)?;
        s.decode_s += t.elapsed().as_secs_f64();
        finished.into_iter().for_each(&mut *done);
    }
    Ok(s)
}

/// Loads `deploy/local/env` (the local stack's endpoints) into the environment, without overriding
/// what is already set.
pub fn load_env() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/env");
    for line in std::fs::read_to_string(path).expect("deploy/local/env").lines() {
        if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            if std::env::var_os(k.trim()).is_none() {
                std::env::set_var(k.trim(), v.trim());
            }
        }
    }
}
