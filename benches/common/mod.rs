//! Helpers shared by the benchmarks: command-line flags, peak memory, child-process JSON.
#![allow(dead_code)]

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
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
