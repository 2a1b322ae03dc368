#!/usr/bin/env bash
# The whole service on this machine, end to end: install and start the local stack (building the
# binaries meanwhile), create the topics and the bucket, publish image pairs whose edits are known
# (plus one bad event of every kind), run `blip2idc serve` until the pairs are captioned, stop it
# gracefully, print each stored caption beside the known edit and score the run with `blip2idc eval`.
#
# The default model is the demo BLIP2IDC of models/synthetic/ (a tiny BLIP-2 pretrained on the
# synthetic shapes world + a LoRA adapter trained on its pairs by `blip2idc retrain`). For the real
# model, with a BLIP2IDC adapter (PEFT directory) on this machine:
#   BLIP2IDC_MODEL__CHECKPOINT=Salesforce/blip2-opt-2.7b BLIP2IDC_MODEL__ADAPTER=/path/to/adapter \
#   BLIP2IDC_MODEL__MAX_NEW_TOKENS=77 deploy/local/quickstart.sh
# Options (environment): QUICKSTART_PAIRS (default 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
started=$(date +%s)
bash deploy/local/up.sh
set -a; . deploy/local/env; set +a
export BLIP2IDC_LOG__FORMAT="${BLIP2IDC_LOG__FORMAT:-pretty}"
export BLIP2IDC_MODEL__CHECKPOINT="${BLIP2IDC_MODEL__CHECKPOINT:-models/synthetic/base}"
if [ "$BLIP2IDC_MODEL__CHECKPOINT" = models/synthetic/base ]; then
  export BLIP2IDC_MODEL__ADAPTER="${BLIP2IDC_MODEL__ADAPTER:-models/synthetic/adapter}"
  # The tiny base has 64 positions: 8 query tokens + at most 56 new tokens.
  export BLIP2IDC_MODEL__MAX_NEW_TOKENS="${BLIP2IDC_MODEL__MAX_NEW_TOKENS:-32}"
fi
pairs="${QUICKSTART_PAIRS:-12}"

bin="${CARGO_TARGET_DIR:-target}/debug"
prefix="demo-$(date +%s)"
"$bin/blip2idc" migrate
"$bin/blip2idc-dev" setup
"$bin/blip2idc-dev" seed --pairs "$pairs" --bad --prefix "$prefix"

"$bin/blip2idc" serve & pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
"$bin/blip2idc-dev" wait --count "$pairs" --prefix "$prefix" --timeout 300s
kill -TERM $pid && wait $pid || true
trap - EXIT

out="deploy/local/.state/$prefix"
echo
echo "== stored captions of $BLIP2IDC_MODEL__CHECKPOINT${BLIP2IDC_MODEL__ADAPTER:+ + $BLIP2IDC_MODEL__ADAPTER} =="
"$bin/blip2idc-dev" captions --prefix "$prefix" --limit "$pairs" --eval-dir "$out"
echo
echo "== scores of these captions against the known edits (blip2idc eval) =="
"$bin/blip2idc" eval --predictions "$out/predictions.jsonl" --references "$out/references.jsonl"
echo
echo "(bad events went to the dead-letter topic image-pairs.dlq; admin endpoints were on 127.0.0.1:9464;"
echo " done in $(( $(date +%s) - started )) s)"
