#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU, CUDA's driver and a PyTorch with
# transformers and PEFT (whatever versions it has: they are detected and written into the results).
#
#   bash deploy/cuda/device-check.sh [--out DIR] [--bin DIR] [--python PY] [--work DIR] [--steps LIST]
#   bash deploy/cuda/device-check.sh --dry-run [--out DIR] [--bin DIR] [--python PY]
#
# Steps (all by default; --steps a,b,c,d,e picks some):
#   a  parity:  the CUDA build on the tiny parity fixtures (tests/fixtures/blip2) against the committed
#               transformers 4.35 + PEFT reference: f32 greedy ids identical, bf16 logits within 5 %
#               of the reference logits' largest magnitude (benches/device_parity.rs)
#   b  a full-size random blip2-opt-2.7b checkpoint + LoRA adapter in bf16, written by
#               benches/make_random_checkpoint.py with this machine's torch/transformers/PEFT
#   c  captioning at batch 1, 8 and 32 in bf16: ours with continuous batching (at most B rows decode,
#               queued pairs join as rows free) against transformers' `generate` on the same card and
#               the same pixel values (benches/model.rs + model_reference.py); pairs/s, GPU memory
#   d  one LoRA training step in bf16 at batch 8 against PEFT (benches/train_step.rs +
#               train_reference.py); seconds per step, GPU memory
#   e  one table (pairs/s, peak device memory, ratios, goals) on stdout and in DIR/device-check.json
# Every step runs under its own time limit, and all under --budget (default 480 s: the issue's 8 minutes;
# a step gets at most what is left); a step that fails is recorded with its reason and the others still
# run; the exit status is non-zero when a step failed or the parity check did not pass. Goals are
# reported, not enforced.
#
# --bin DIR   the CUDA executables blip2idc, device_parity, model, train_step (default: unpacked from
#             .cuda-carry/blip2idc-cuda.tar.xz, which `deploy/cuda/build.sh --carry` makes; carry the
#             folder .cuda-carry to the GPU machine)
# --python PY the interpreter with torch, transformers and peft (default python3)
# --out DIR   results: one JSON per step, logs, device-check.json (default $OUT when set, else
#             ./device-check-out)
# --work DIR  where the random checkpoint goes (default /tmp/blip2idc-device-check; ~8 GB)
# --budget S  seconds for the whole check (default 480)
# --dry-run   everything a CPU can do, in about a minute: device cpu, the "tiny" random config (width 64)
#             instead of the full one, few pairs and tokens. Without torch in PY the reference sides and
#             step b are skipped (recorded as such) and the committed fixture tiny-a stands in for b's
#             checkpoint. tests/device_check.rs runs this in CI.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { printf 'device-check: %s\n' "$*" >&2; exit 2; }

dry=0 bin="" py=python3 out="${OUT:-$root/device-check-out}" work=/tmp/blip2idc-device-check steps=a,b,c,d,e budget=480
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --bin) bin="${2:?--bin needs a directory}"; shift ;;
    --python) py="${2:?--python needs an interpreter}"; shift ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --work) work="${2:?--work needs a directory}"; shift ;;
    --steps) steps="${2:?--steps needs a list such as a,c,e}"; shift ;;
    --budget) budget="${2:?--budget needs seconds}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$steps" =~ ^[a-e](,[a-e])*$ ]] || die "--steps takes letters a-e separated by commas, not '$steps'"
[[ "$budget" =~ ^[0-9]+$ ]] && [ "$budget" -ge 30 ] || die "--budget takes whole seconds, at least 30, not '$budget'"
want() { [[ ",$steps," == *",$1,"* ]]; }
command -v "$py" >/dev/null || die "--python $py: not found"
mkdir -p "$out" "$work" || die "cannot create $out or $work"
out="$(cd "$out" && pwd)"
log() { printf '[device-check %s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$out/device-check.log" >&2; }

# The executables: given, or unpacked from the carried archive.
if [ -z "$bin" ]; then
  archive="$root/.cuda-carry/blip2idc-cuda.tar.xz"
  [ -f "$archive" ] || die "no --bin and no $archive (build it here with: deploy/cuda/build.sh --carry)"
  bin="$work/bin"
  mkdir -p "$bin" && tar -C "$bin" -xJf "$archive" || die "unpacking $archive failed"
fi
for exe in blip2idc device_parity model train_step; do
  [ -x "$bin/$exe" ] || die "$bin/$exe is missing or not executable"
done

if [ "$dry" = 1 ]; then
  device=cpu preset=tiny pairs=(2 8 8) batches=(1 8 32) max_new=8 train_steps=2 warmup=2
  limit_parity=120 limit_ckpt=120 limit_caption=120 limit_train=120
else
  device=cuda preset=full pairs=(4 32 64) batches=(1 8 32) max_new=77 train_steps=3 warmup=4
  limit_parity=60 limit_ckpt=180 limit_caption=100 limit_train=110
  # The CUDA libraries the binaries link (cuBLAS, cuRAND, NVRTC, cudart 13): the driver's libcuda is
  # on the loader's path already; the rest come with a cu13 PyTorch.
  libs="$("$py" -c 'import nvidia, os, glob; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True)})))' 2>/dev/null)"
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do [ -d "$d" ] && libs="${libs:+$libs:}$d"; done
  [ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# The environment, detected.
has_torch=0
"$py" -c 'import torch, transformers, peft' 2>/dev/null && has_torch=1
"$py" - "$out/env.json" "$device" "$has_torch" <<'EOF'
import json, platform, subprocess, sys
path, device, has_torch = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
env = {"device": device, "python": platform.python_version(), "dry_run": device == "cpu"}
for mod in ("torch", "transformers", "peft", "accelerate"):
    try:
        env[mod] = __import__(mod).__version__
    except Exception:  # any import failure: not available
        env[mod] = None
if has_torch:
    import torch
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=20)
    env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
except (OSError, subprocess.TimeoutExpired) as e:
    env["nvidia_smi"] = f"not available: {e}"
with open(path, "w") as f:
    json.dump(env, f, indent=2)
print(json.dumps(env))
EOF
log "environment: $(cat "$out/env.json" | tr -d '\n ' )"
if [ "$dry" = 0 ] && [ "$has_torch" = 0 ]; then die "$py has no torch/transformers/peft: the reference sides need them"; fi
# The benchmarks find the reference scripts (benches/*.py) in this checkout, wherever they were built.
export BLIP2IDC_REPO="$root"
reference=(--python "$py")
[ "$has_torch" = 1 ] || reference=(--no-reference)

failed=()
# run STEP LIMIT JSON -- command...: runs it under the time limit with its log in $out/STEP.log; on
# failure writes {"step", "status": "failed", "reason"} to JSON instead.
run() {
  local step="$1" limit="$2" json="$3"; shift 4
  local t0=$SECONDS left=$((budget - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    log "$step SKIPPED: ${left}s left of the ${budget}s budget"
    printf '{"step": "%s", "status": "failed", "reason": "no time left of the %ss budget"}\n' "$step" "$budget" >"$json"
    failed+=("$step")
    return
  fi
  log "$step (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$step.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    local reason="exit status $rc"
    [ $rc -eq 124 ] && reason="ran past its limit of ${limit}s"
    log "$step FAILED ($reason); last lines of $out/$step.log:"
    tail -n 8 "$out/$step.log" | sed 's/^/    /' >&2
    "$py" -c 'import json,sys; json.dump({"step": sys.argv[1], "status": "failed", "reason": sys.argv[2], "log_tail": open(sys.argv[3], errors="replace").read()[-2000:]}, open(sys.argv[4], "w"))' \
      "$step" "$reason" "$out/$step.log" "$json"
    failed+=("$step")
  else
    log "$step done in $((SECONDS - t0)) s"
  fi
}

# a. Parity on the tiny fixtures.
if want a; then
  run parity "$limit_parity" "$out/parity.json" -- "$bin/device_parity" --bench --device "$device" \
    --fixtures "$root/tests/fixtures/blip2" --json-out "$out/parity.json"
fi

# b. The random checkpoint, made with this machine's libraries.
ckpt="$work/ckpt-$preset" adapter="$work/adapter-$preset"
if want b || want c || want d; then
  if [ "$has_torch" = 1 ]; then
    run checkpoint "$limit_ckpt" "$out/checkpoint.json" -- "$py" -u benches/make_random_checkpoint.py \
      --preset "$preset" --dtype bf16 --out "$ckpt" --adapter-out "$adapter" --no-check --json-out "$out/checkpoint.json"
  else
    log "checkpoint: skipped ($py has no torch); the committed fixture tiny-a stands in"
    ckpt="$root/tests/fixtures/blip2/tiny-a" adapter="$root/tests/fixtures/blip2/tiny-a-adapter"
    printf '{"step": "checkpoint", "status": "skipped", "reason": "no torch in %s", "out": "%s"}\n' "$py" "$ckpt" >"$out/checkpoint.json"
  fi
fi

# c. Captioning at batch 1, 8, 32 with continuous batching, against transformers' generate.
if want c; then
  for i in 0 1 2; do
    b="${batches[$i]}"
    run "caption-b$b" "$limit_caption" "$out/caption-b$b.json" -- "$bin/model" --bench --model "$ckpt" --adapter "$adapter" \
      "${reference[@]}" --dtype bf16 --device "$device" --batch "$b" --pairs "${pairs[$i]}" \
      --max-new-tokens "$max_new" --warmup-tokens "$warmup" --engine continuous --json-out "$out/caption-b$b.json"
  done
fi

# d. One LoRA training step at batch 8, against PEFT.
if want d; then
  run train "$limit_train" "$out/train.json" -- "$bin/train_step" --bench --model "$ckpt" "${reference[@]}" \
    --dtype bf16 --device "$device" --batch 8 --steps "$train_steps" --json-out "$out/train.json"
fi

# e. The table.
if want e; then
  "$py" "$root/deploy/cuda/device_table.py" "$out" || failed+=(table)
fi
if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "all steps done; results in $out/device-check.json"
