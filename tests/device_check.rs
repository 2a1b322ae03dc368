//! The GPU check (`deploy/cuda/device-check.sh`) dry-run on the CPU: its argument handling, every step
//! a CPU can run (the parity benchmark on the tiny fixtures, captioning with continuous batching at
//! batch 1/8/32, the training step), the reference side where the Python has torch, and the table
//! (`deploy/cuda/device_table.py`), so that the one command a GPU machine runs has already run here.
//!
//! The benchmarks are built by a nested `cargo build --benches` (dev profile, into this build's target
//! directory). `BLIP2IDC_REFERENCE_PYTHON=/path/to/python` (one with `benches/requirements-reference.txt`)
//! also runs the PyTorch reference side and the random-checkpoint script (step b).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("deploy/cuda/device-check.sh")
}

/// Builds the benchmarks the check runs and links them, with `blip2idc`, into one folder.
fn executables(dir: &Path) -> PathBuf {
    // Without the variables cargo sets for a test process (CARGO_PKG_*, LD_LIBRARY_PATH, ...): build
    // scripts that watch them would otherwise rebuild, and the next `cargo test` rebuild back.
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS", "CARGO_TERM_COLOR"];
        if (key.starts_with("CARGO") && !keep.contains(&key.as_ref())) || key == "LD_LIBRARY_PATH" {
            cargo.env_remove(key.as_ref());
        }
    }
    let out = cargo
        .current_dir(repo())
        .args(["build", "--locked", "--message-format=json-render-diagnostics"])
        .args(["--bench", "device_parity", "--bench", "model", "--bench", "train_step"])
        .output()
        .expect("running cargo");
    assert!(out.status.success(), "building the benchmarks failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else { continue };
        if let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) {
            if ["device_parity", "model", "train_step"].contains(&name) {
                std::os::unix::fs::symlink(exe, bin.join(name)).unwrap();
            }
        }
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_blip2idc"), bin.join("blip2idc")).unwrap();
    bin
}

fn check(args: &[&str]) -> Output {
    Command::new("bash").arg(script()).args(args).env_remove("OUT").output().expect("running bash")
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let o = check(&["--steps", "a,z"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--steps takes letters a-e"), "{o:?}");
    let o = check(&["--budget", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--budget takes whole seconds, at least 30"), "{o:?}");
    let o = check(&["--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown argument '--frobnicate'"), "{o:?}");
    let o = check(&["--bin", "/nonexistent/bin", "--out", &std::env::temp_dir().join("dc-bad").to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/bin/blip2idc is missing"), "{o:?}");
    let o = check(&["--help"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--dry-run"), "{o:?}");
}

#[test]
fn the_gpu_check_dry_runs_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = executables(tmp.path());
    let out = tmp.path().join("out");
    let python = std::env::var("BLIP2IDC_REFERENCE_PYTHON").unwrap_or_else(|_| "python3".into());
    let reference = std::env::var_os("BLIP2IDC_REFERENCE_PYTHON").is_some();
    let o = Command::new("bash")
        .arg(script())
        .args(["--dry-run", "--python", &python])
        .arg("--bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .arg("--work")
        .arg(tmp.path().join("work"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "device-check --dry-run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("DRY RUN") && stdout.contains("| caption b=32 bf16 (continuous) |"), "{stdout}");

    let result: Value = serde_json::from_str(&std::fs::read_to_string(out.join("device-check.json")).unwrap()).unwrap();
    assert_eq!(result["env"]["device"], "cpu");
    assert_eq!(result["parity_pass"], true, "{stdout}");
    let parity = &result["steps"]["parity"]["checks"];
    assert_eq!(parity.as_array().unwrap().len(), 8, "2 checkpoints x base/adapter x f32/bf16");
    let rows = result["rows"].as_array().unwrap();
    let steps: Vec<&str> = rows.iter().map(|r| r["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["caption-b1", "caption-b8", "caption-b32", "train"]);
    for r in rows {
        assert!(r["ours"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ours_memory_bytes"].as_u64().unwrap() > 0, "{r}");
        // The reference side ran exactly when a Python with torch was given.
        assert_eq!(r["reference"].as_f64().is_some(), reference, "{r}");
        assert_eq!(r["ratio"].as_f64().is_some(), reference, "{r}");
    }
    let b32 = &result["steps"]["caption-b32"];
    assert_eq!(b32["engine"], "continuous");
    assert_eq!(b32["ours"]["engine"], "continuous");
    // 8 pairs at batch 32 x 8 new tokens: the random weights never stop early.
    assert_eq!(b32["ours"]["tokens"], 64);
    let ckpt = &result["steps"]["checkpoint"];
    if reference {
        assert_eq!(ckpt["preset"], "tiny");
        assert!(ckpt["transformers_version"].is_string(), "{ckpt}");
    } else {
        assert_eq!(ckpt["status"], "skipped");
    }
}

/// The table's goals, on results shaped as a GPU run writes them (device memory measured).
#[test]
fn the_table_judges_the_gpu_goals() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, v: Value| std::fs::write(tmp.path().join(format!("{name}.json")), v.to_string()).unwrap();
    let gib = 1u64 << 30;
    write("env", serde_json::json!({"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11.0"}));
    let side =
        |rate: f64, mem: u64| serde_json::json!({"pairs_per_s": rate, "gpu_peak_bytes": mem, "peak_rss_bytes": 1});
    write(
        "caption-b32",
        serde_json::json!({"batch": 32, "dtype": "bf16", "engine": "continuous",
        "ours": side(160.0, 7 * gib), "reference": side(100.0, 8 * gib)}),
    );
    write(
        "caption-b8",
        serde_json::json!({"batch": 8, "dtype": "bf16", "engine": "continuous",
        "ours": side(50.0, 9 * gib), "reference": side(40.0, 8 * gib)}),
    );
    write(
        "train",
        serde_json::json!({"batch": 8, "dtype": "bf16",
        "ours": {"step_s": 0.5, "gpu_peak_bytes": 20 * gib}, "reference": {"step_s": 0.4, "gpu_peak_bytes": 18 * gib}}),
    );
    write("parity", serde_json::json!({"status": "failed", "reason": "exit status 1"}));
    let o = Command::new("python3").arg(repo().join("deploy/cuda/device_table.py")).arg(tmp.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "a failed parity step fails the table");
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("device-check.json")).unwrap()).unwrap();
    let row = |step: &str| result["rows"].as_array().unwrap().iter().find(|r| r["step"] == step).unwrap().clone();
    let b32 = row("caption-b32");
    assert!((b32["ratio"].as_f64().unwrap() - 1.6).abs() < 1e-9);
    assert!((b32["memory_ratio"].as_f64().unwrap() - 0.875).abs() < 1e-9);
    assert_eq!(b32["goal_met"], true);
    assert_eq!(row("caption-b8")["goal_met"], Value::Null, "no goal at batch 8");
    let train = row("train");
    assert_eq!(train["goal_met"], false, "1.25x PEFT's time misses the goal");
    assert!(train["goal"].as_str().unwrap().contains("time ≤ 1.0×: NOT met"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("(a) parity: FAILED"));
}
