#!/usr/bin/env bash
# Builds the CUDA binary (candle's `cuda` backend: cuBLAS, custom kernels) on a machine without a GPU or
# a CUDA toolkit, from PyPI's CUDA 13.0 wheels (the GPU machines run driver 580 / CUDA 13.0).
#
#   deploy/cuda/build.sh            → $CARGO_TARGET_DIR_CUDA/release/blip2idc (default target/cuda)
#   deploy/cuda/build.sh train_step → also the CUDA build of that benchmark (any of benches/*.rs),
#                                     its path printed last: a GPU machine runs it with `--bench ...`
#   deploy/cuda/build.sh --carry    → blip2idc and the GPU check's benchmarks (device_parity, model,
#                                     train_step), stripped and packed into .cuda-carry/blip2idc-cuda.tar.xz
#                                     (checked to fit a 64 MiB transfer with the repository); on the GPU
#                                     machine `bash deploy/cuda/device-check.sh` unpacks and runs them
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), BLIP2IDC_CUDA_VENV (the toolkit venv, cached),
# CARGO_TARGET_DIR_CUDA. At run time the machine must provide libcuda.so.1 (the driver) and cuBLAS /
# cuBLASLt / cuRAND / cudart / NVRTC 13 (e.g. the same PyPI wheels, or a cu130 PyTorch's
# site-packages/nvidia/cu13/lib) on LD_LIBRARY_PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
carry=0
if [ "${1:-}" = "--carry" ]; then
  carry=1
  shift
  set -- device_parity model train_step "$@"
fi
venv="${BLIP2IDC_CUDA_VENV:-$HOME/.cache/blip2idc/cuda-venv}"
target="${CARGO_TARGET_DIR_CUDA:-$root/target/cuda}"
log() { printf '[cuda-build] %s\n' "$*" >&2; }

# 1. A CUDA 13.0 toolkit from PyPI (nvcc, headers, libraries): ~1 GB, cached in the venv.
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
log "installing the CUDA 13.0 wheels into $venv"
"$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 \
  nvidia-cuda-nvrtc==13.0.88
CU="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$CU/bin/nvcc" ] || { log "nvcc not found under $CU"; exit 1; }

# 2. A link directory: plain-named symlinks to the wheels' libraries, and a libcuda stub (no wheel ships
#    the driver). The stub defines every driver function cudarc declares and carries the soname
#    libcuda.so.1, so the real driver library is the one loaded at run time.
link="$target/link"
mkdir -p "$link"
for lib in cublas cublasLt curand nvrtc cudart; do
  so="$(ls "$CU/lib/lib$lib.so."* 2>/dev/null | sort | head -1)"
  [ -n "$so" ] || { log "lib$lib missing from $CU/lib"; exit 1; }
  ln -sf "$so" "$link/lib$lib.so"
done
cargo fetch --locked -q
cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)"
grep -hoE '^\s+fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' \
  | sort -u | awk '{print "void " $1 "(void) {}"}' > "$link/libcuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/libcuda_stub.c"
log "libcuda stub: $(wc -l < "$link/libcuda_stub.c") driver functions"

# 3. The build (kernels compiled by nvcc for CUDA_COMPUTE_CAP).
export PATH="$CU/bin:$CU/nvvm/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU" CUDA_ROOT="$CU" NVCC="$CU/bin/nvcc"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export LIBRARY_PATH="$link:$CU/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
log "cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP)"
CARGO_TARGET_DIR="$target" cargo build --release --locked -p blip2idc --features cuda --bin blip2idc
log "built $target/release/blip2idc"
benches=()
for bench in "$@"; do
  [ -f "benches/$bench.rs" ] || { log "no benchmark benches/$bench.rs"; exit 1; }
  exe="$(CARGO_TARGET_DIR="$target" cargo bench --locked -p blip2idc --features cuda --bench "$bench" --no-run 2>&1 \
    | tee /dev/stderr | sed -nE 's/.*Executable .*\((.*)\)$/\1/p')"
  [ -x "$exe" ] || { log "building benchmark $bench failed"; exit 1; }
  benches+=("$exe")
done
# Smoke test here, without a GPU: the binary links libcuda.so.1, so point the loader at the stub (in a
# directory of its own: never put it on a GPU machine's library path, it would shadow the driver).
# On the CPU it must caption; with --device cuda it must fail with a plain error, not crash.
mkdir -p "$target/smoke-stub"
ln -sf ../link/libcuda.so "$target/smoke-stub/libcuda.so.1"
pair=(tests/fixtures/blip2/images/p0_original_rgb.png tests/fixtures/blip2/images/p0_modified_rgb.png)
run() { LD_LIBRARY_PATH="$target/smoke-stub:$CU/lib" RUST_BACKTRACE=0 "$target/release/blip2idc" caption \
  --model tests/fixtures/blip2/tiny-a "$@" "${pair[@]}"; }
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '; then
  run --device cpu >/dev/null 2>"$target/smoke.err" || { log "CPU smoke test failed:"; cat "$target/smoke.err" >&2; exit 1; }
  log "smoke test: the CUDA binary captions on the CPU"
  if run --device cuda >/dev/null 2>"$target/smoke.err"; then
    log "unexpected: --device cuda succeeded against the stub driver"; exit 1
  fi
  log "smoke test: --device cuda without a GPU says: $(grep -m1 -i error "$target/smoke.err")"
else
  LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$target/release/blip2idc" caption \
    --model tests/fixtures/blip2/tiny-a --device cuda "${pair[@]}" && log "smoke test captioned on the GPU"
fi
for exe in "${benches[@]}"; do log "benchmark: $exe"; done
if [ "$carry" = 1 ]; then
  # Stripped (debug info and symbols are most of a Rust binary) and xz-packed with plain names.
  stage="$target/carry-stage"
  rm -rf "$stage" && mkdir -p "$stage" .cuda-carry
  strip -o "$stage/blip2idc" "$target/release/blip2idc"
  for exe in "${benches[@]}"; do
    name="$(basename "$exe")"
    strip -o "$stage/${name%-*}" "$exe"  # model-0123abcd -> model
  done
  tar -C "$stage" -cJf .cuda-carry/blip2idc-cuda.tar.xz .
  packed=$(stat -c %s .cuda-carry/blip2idc-cuda.tar.xz)
  repo=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
  log "packed $(ls "$stage" | tr '\n' ' ')into .cuda-carry/blip2idc-cuda.tar.xz: $((packed >> 20)) MiB" \
    "(+ the repository's $((repo >> 20)) MiB)"
  [ $((packed + repo)) -lt $((64 << 20)) ] || { log "over the 64 MiB a transfer to the GPU machine takes"; exit 1; }
fi
