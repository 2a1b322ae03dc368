#!/usr/bin/env bash
# Compares this checkout with an earlier revision on the same machine, in the same run: captioning
# (the model benchmark's own side: tiny-a and the synthetic demo model with its adapter, batch 8),
# one LoRA training step (tiny-a batch 4, the demo model batch 8) and the pipeline (6,000 events on
# the local stack). The two builds alternate ROUNDS times; each figure is the median of its rounds,
# and the last column is after / before (> 1: this checkout is faster). Captions' token counts and
# training losses are printed too: a refactor must leave them identical.
#
#   bash benches/compare_revisions.sh REV [ROUNDS]      (the local stack must be up for the pipeline)
#
# Both builds use the dev profile (dependencies' hot crates optimised, ours at opt-level 1) and share
# one target directory, so only the two revisions' own crates compile twice. REV's tree is checked
# out with `git worktree` under a temporary directory and removed afterwards; REV's pipeline run uses
# a database of its own (blip2idc_before), since its migrations may differ.
set -euo pipefail
rev="${1:?usage: compare_revisions.sh REV [ROUNDS]}"
rounds="${2:-3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$(mktemp -d)"
trap 'git -C "$repo" worktree remove --force "$work/before" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$repo" worktree add -f "$work/before" "$rev" >/dev/null

exes() { # builds the three benchmarks in $1 and prints "name path" lines
  (cd "$1" && CARGO_TARGET_DIR="$target" cargo bench --locked --profile dev --no-run \
      --bench model --bench train_step --bench pipeline 2>&1) |
    sed -n 's/.*Executable benches\/\([a-z_]*\)\.rs (\(.*\))/\1 \2/p'
}
declare -A exe
while read -r name path; do exe[before_$name]="$path"; done < <(exes "$work/before")
while read -r name path; do exe[after_$name]="$path"; done < <(exes "$repo")
for k in before_model before_train_step before_pipeline after_model after_train_step after_pipeline; do
  [ -n "${exe[$k]:-}" ] || { echo "no executable for $k" >&2; exit 1; }
  case "${exe[$k]}" in /*) ;; *) exe[$k]="$(cd "$([ "${k%%_*}" = before ] && echo "$work/before" || echo "$repo")" && pwd)/${exe[$k]}";; esac
done

# The captioning inputs: deterministic pixel values at each model's input size (the timing depends
# on the caption lengths they lead to, identical for both builds).
python3 - "$work" <<'EOF'
import struct, random, sys
for size, pairs, name in [(32, 256, "px32.f32"), (64, 128, "px64.f32")]:
    rnd, vals = random.Random(7), []
    for p in range(pairs):
        for c in range(3):
            base = rnd.uniform(-1.5, 1.5)
            vals += [base + 0.8 * ((x * 7 + y * 3 + p * 5 + c) % 11) / 11.0 - 0.4 for y in range(size) for x in range(size)]
    open(f"{sys.argv[1]}/{name}", "wb").write(struct.pack(f"<{len(vals)}f", *vals))
EOF

set -a; [ -f "$repo/deploy/local/env" ] && . "$repo/deploy/local/env"; set +a
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
db_after="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/blip2idc}"
db_before="${db_after%/*}/blip2idc_before"
psql "${db_after%/*}/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = 'blip2idc_before'" 2>/dev/null | grep -q 1 ||
  psql "${db_after%/*}/postgres" -qc "CREATE DATABASE blip2idc_before" 2>/dev/null || true

demo="$repo/models/synthetic"
log="$work/runs.jsonl"
for round in $(seq "$rounds"); do
  for side in before after; do
    dir="$repo"; db="$db_after"
    [ "$side" = before ] && { dir="$work/before"; db="$db_before"; }
    run() { # label, command...: appends {"side", "label", result} to the log
      local label="$1"; shift
      local out; out="$(cd "$dir" && "$@" 2>/dev/null | grep '^{' | tail -1)" || true
      echo "{\"side\":\"$side\",\"label\":\"$label\",\"result\":${out:-null}}" >> "$log"
    }
    run "caption tiny-a, batch 8 (pairs/s)" "${exe[${side}_model]}" --child --model tests/fixtures/blip2/tiny-a \
      --pairs 256 --batch 8 --pixels "$work/px32.f32"
    run "caption demo model + adapter, batch 8 (pairs/s)" "${exe[${side}_model]}" --child --model "$demo/base" \
      --adapter "$demo/adapter" --pairs 128 --batch 8 --max-new-tokens 40 --pixels "$work/px64.f32"
    run "train step tiny-a, batch 4 (s)" "${exe[${side}_train_step]}" --child --model tests/fixtures/blip2/tiny-a --batch 4 --steps 50
    run "train step demo model, batch 8 (s)" "${exe[${side}_train_step]}" --child --model "$demo/base" --batch 8 --steps 10
    pairs="$(cd "$dir" && DATABASE_URL="$db" "${exe[${side}_pipeline]}" --bench --events 6000 2>&1 |
      sed -n 's/.* = \([0-9.]*\) pairs\/s.*/\1/p' | head -1)" || true
    echo "{\"side\":\"$side\",\"label\":\"pipeline 6000 events (pairs/s)\",\"result\":{\"pairs_per_s\":${pairs:-null}}}" >> "$log"
    echo "round $round: $side done" >&2
  done
done

python3 - "$log" "$rev" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r["label"] for r in runs))
print(f"{'':52} {'before (' + sys.argv[2][:10] + ')':>20} {'after':>12} {'after/before':>13}")
for label in labels:
    def figures(side):
        out = []
        for r in runs:
            res = r["result"]
            if r["label"] == label and r["side"] == side and res:
                v = res.get("pairs_per_s", res.get("step_s"))
                if v is not None:
                    out.append((v, res.get("tokens"), (res.get("losses") or [None])[-1]))
        return out
    b, a = figures("before"), figures("after")
    if not b or not a:
        print(f"{label:52} {'(failed)':>20}")
        continue
    mb, ma = statistics.median(x[0] for x in b), statistics.median(x[0] for x in a)
    speed = ma / mb if "pairs/s" in label else mb / ma
    print(f"{label:52} {mb:20.4f} {ma:12.4f} {speed:12.2f}x")
    same = {x[1:] for x in b} == {x[1:] for x in a}
    if b[0][1] is not None or b[0][2] is not None:
        print(f"{'':52} tokens / last loss identical: {same} ({b[0][1] or b[0][2]})")
EOF
