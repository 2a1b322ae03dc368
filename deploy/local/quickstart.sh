#!/usr/bin/env bash
# The whole service on this machine, end to end: start the local stack, create the topics and the
# bucket, publish a few sample image pairs (plus a few bad events), run `blip2idc serve` until the
# pairs are captioned, stop it gracefully and print the stored captions.
#
# The default model is the tiny random BLIP-2 checkpoint kept in tests/fixtures/blip2/tiny-a: its
# captions are gibberish, and the service says so. For real captions set
#   BLIP2IDC_MODEL__CHECKPOINT=Salesforce/blip2-opt-2.7b BLIP2IDC_MODEL__ADAPTER=<adapter dir>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blip2idc/target}"
bash deploy/local/up.sh
set -a; . deploy/local/env; set +a
export BLIP2IDC_LOG__FORMAT="${BLIP2IDC_LOG__FORMAT:-pretty}"

cargo build --quiet --bin blip2idc --bin blip2idc-dev
bin="$CARGO_TARGET_DIR/debug"
prefix="demo-$(date +%s)"
"$bin/blip2idc" migrate
"$bin/blip2idc-dev" setup
"$bin/blip2idc-dev" seed --pairs 5 --bad --prefix "$prefix"

"$bin/blip2idc" serve & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
"$bin/blip2idc-dev" wait --count 5 --prefix "$prefix" --timeout 300s
kill -TERM $pid && wait $pid || true
trap - EXIT

echo
echo "== stored captions (event_id, model_version, caption) =="
"$bin/blip2idc-dev" captions --prefix "$prefix"
echo
echo "(bad events went to the dead-letter topic image-pairs.dlq; admin endpoints were on 127.0.0.1:9464)"
