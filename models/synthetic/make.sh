#!/usr/bin/env bash
# Regenerates the demo BLIP2IDC of models/synthetic/ with the project's own commands:
#   1. (only with --pretrain, ~8 min on 2 cores) `blip2idc-dev synth-pretrain` pretrains the tiny
#      BLIP-2 fully on single-image captions of the synthetic shapes world -> models/synthetic/base;
#   2. on the local stack (deploy/local/up.sh), a fresh database `blip2idc_demo`, a bucket, and
#      LABELS labeled pairs of that world (`blip2idc-dev synth-labels`, deterministic seed);
#   3. `blip2idc retrain` (settings: models/synthetic/retrain.toml) trains the BLIP2IDC LoRA adapter
#      on them, scores it against the base on the frozen holdout and uploads it;
#   4. the adapter is copied to models/synthetic/adapter/ with the run's outcome (run.json).
# Usage: models/synthetic/make.sh [--pretrain] [--labels N]     (default 2000 labels)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
pretrain=0; labels=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --pretrain) pretrain=1 ;;
    --labels) labels="$2"; shift ;;
    *) echo "usage: $0 [--pretrain] [--labels N]" >&2; exit 2 ;;
  esac
  shift
done
bash deploy/local/up.sh
set -a; . deploy/local/env; set +a
bin="${CARGO_TARGET_DIR:-target}/debug"
if [ "$pretrain" = 1 ]; then
  "$bin/blip2idc-dev" synth-pretrain --out models/synthetic/base --image-size 64 --batch-size 8 --lr 1e-3 --epochs 12
fi
export DATABASE_URL="${DATABASE_URL%/*}/blip2idc_demo"
export BLIP2IDC_S3__ALLOWED_BUCKETS='["demo-labels"]'
export BLIP2IDC_RETRAIN__ADAPTER_BUCKET=demo-labels
export BLIP2IDC_LOG__FORMAT=pretty
sudo_maybe() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_maybe su postgres -c "dropdb --if-exists blip2idc_demo && createdb blip2idc_demo"
rm -rf models/synthetic/.work; mkdir -p models/synthetic/.work
"$bin/blip2idc-dev" synth-labels --pairs "$labels" --prefix labels --seed 2024
"$bin/blip2idc" retrain --config models/synthetic/retrain.toml --json | tee models/synthetic/.work/run.json
version="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["candidate_version"])' models/synthetic/.work/run.json)"
rm -rf models/synthetic/adapter
cp -r "models/synthetic/.work/$version" models/synthetic/adapter
python3 -m json.tool models/synthetic/.work/run.json > models/synthetic/adapter/run.json
rm -rf models/synthetic/.work
echo "demo adapter $version -> models/synthetic/adapter"
