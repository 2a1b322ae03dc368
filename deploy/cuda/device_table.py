#!/usr/bin/env python3
"""Step (e) of deploy/cuda/device-check.sh: one table of the GPU check's results, and the same as JSON.

usage: device_table.py DIR
Reads DIR/env.json, parity.json, checkpoint.json, caption-b1.json, caption-b8.json, caption-b32.json and
train.json (whichever exist; a failed or skipped step is shown as such), prints a Markdown table (pairs/s
or seconds per step, peak device memory, ratios against the reference, the issue's goals) and writes
everything to DIR/device-check.json. Exits 1 when the parity check is present and did not pass.
Standard library only: it runs on the GPU machine's Python and on any CI machine.
"""
import json
import os
import sys

GIB = 1024 ** 3
# The GPU goals of the serving-engine issue (#13): ours / transformers' eager generate at batch 32 in
# bf16, and ours / PEFT for one LoRA step at batch 8.
GOALS = {
    "caption-b32": {"speed_ratio_min": 1.5, "memory_ratio_max": 1.0},
    "train": {"time_ratio_max": 1.0, "memory_ratio_max": 1.0},
}


def load(d, name):
    path = os.path.join(d, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def mem(side):
    """(bytes, what): device memory above idle where measured, else the process's peak RSS."""
    if side.get("gpu_peak_bytes") is not None:
        return side["gpu_peak_bytes"], "GPU"
    if side.get("peak_rss_bytes") is not None:
        return side["peak_rss_bytes"], "RSS"
    return None, None


def fmt_mem(side):
    b, what = mem(side)
    return "—" if b is None else f"{b / GIB:.2f} GiB {what}"


def ratio(a, b):
    try:
        return a / b if a is not None and b else None
    except TypeError:
        return None


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def goal_text(step, speed_or_time, memory):
    g = GOALS.get(step)
    if not g:
        return "", None
    checks = []
    if "speed_ratio_min" in g:
        checks.append(("pairs/s", speed_or_time, lambda r: r >= g["speed_ratio_min"], f"≥ {g['speed_ratio_min']}×"))
    if "time_ratio_max" in g:
        checks.append(("time", speed_or_time, lambda r: r <= g["time_ratio_max"], f"≤ {g['time_ratio_max']}×"))
    checks.append(("memory", memory, lambda r: r <= g["memory_ratio_max"], f"≤ {g['memory_ratio_max']}×"))
    parts, met = [], True
    for what, r, ok, want in checks:
        if r is None:
            parts.append(f"{what} {want}: not measured")
            met = None if met is not False else False
        else:
            good = ok(r)
            parts.append(f"{what} {want}: {'met' if good else 'NOT met'}")
            met = met if good else False
    return "; ".join(parts), met


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) == 2 else 2
    d = sys.argv[1]
    env = load(d, "env") or {}
    result = {"env": env, "steps": {}, "rows": [], "parity_pass": None}
    lines = []
    gpu = env.get("gpu") or env.get("nvidia_smi") or "no GPU"
    lines.append(f"GPU check on {env.get('device', '?')} ({gpu}); python {env.get('python')}, torch "
                 f"{env.get('torch')} (CUDA {env.get('torch_cuda')}), transformers {env.get('transformers')}, "
                 f"peft {env.get('peft')}" + (" — DRY RUN" if env.get("dry_run") else ""))

    parity = load(d, "parity")
    if parity is not None:
        result["steps"]["parity"] = parity
        if parity.get("status") == "failed":
            lines.append(f"(a) parity: FAILED — {parity.get('reason')}")
            result["parity_pass"] = False
        else:
            checks = parity.get("checks", [])
            f32 = [c for c in checks if c["dtype"] == "f32"]
            bf16 = [c for c in checks if c["dtype"] == "bf16"]
            same = sum(c["ids_equal_batched"] == c["pairs"] and c["ids_equal_one_by_one"] == c["pairs"] for c in f32)
            worst_f32 = max((c["logits_max_abs_diff"] for c in f32), default=float("nan"))
            worst_bf16 = max((c["logits_max_abs_diff"] / c["logits_scale"] for c in bf16 if c["logits_scale"]),
                             default=float("nan"))
            result["parity_pass"] = bool(parity.get("pass"))
            lines.append(f"(a) parity on the tiny fixtures: {'PASS' if parity.get('pass') else 'FAIL'} — f32 greedy "
                         f"ids identical in {same}/{len(f32)} checkpoint×adapter cases, f32 logits max|Δ| "
                         f"{worst_f32:.2e} (tolerance {parity.get('f32_logits_tolerance', 0):.0e}); bf16 logits max|Δ| "
                         f"{worst_bf16:.3f} of the largest logit (tolerance "
                         f"{parity.get('bf16_logits_relative_tolerance', 0):.2f})")

    ckpt = load(d, "checkpoint")
    if ckpt is not None:
        result["steps"]["checkpoint"] = ckpt
        if ckpt.get("status") in ("failed", "skipped"):
            lines.append(f"(b) random checkpoint: {ckpt['status']} — {ckpt.get('reason')}")
        else:
            n = ckpt.get("params", 0)
            size = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
            lines.append(f"(b) random checkpoint: preset {ckpt.get('preset')}, {size} "
                         f"parameters in {ckpt.get('dtype')}, written in {ckpt.get('write_s', 0):.0f} s with "
                         f"transformers {ckpt.get('transformers_version')}, peft {ckpt.get('peft_version')}")

    lines.append("")
    lines.append("| step | ours | reference | ratio (speed; memory) | goal |")
    lines.append("|---|---|---|---|---|")
    for step in ("caption-b1", "caption-b8", "caption-b32", "train"):
        r = load(d, step)
        if r is None:
            continue
        result["steps"][step] = r
        if r.get("status") == "failed":
            lines.append(f"| {step} | FAILED: {r.get('reason')} | | | |")
            result["rows"].append({"step": step, "status": "failed", "reason": r.get("reason")})
            continue
        ours, ref = r.get("ours", {}), r.get("reference", {})
        skipped = "skipped" in ref
        if step == "train":
            o, t = ours.get("step_s"), ref.get("step_s")
            ours_txt = f"{o:.3f} s/step" if o is not None else "—"
            ref_txt = "skipped" if skipped else (f"{t:.3f} s/step" if t is not None else "—")
            speed = ratio(o, t)  # time ratio: lower is better
            label = f"train b={r.get('batch')} {r.get('dtype')}"
        else:
            o, t = ours.get("pairs_per_s"), ref.get("pairs_per_s")
            ours_txt = f"{o:.2f} pairs/s" if o is not None else "—"
            ref_txt = "skipped" if skipped else (f"{t:.2f} pairs/s" if t is not None else "—")
            speed = ratio(o, t)
            label = f"caption b={r.get('batch')} {r.get('dtype')} ({r.get('engine')})"
        memory = ratio(mem(ours)[0], mem(ref)[0]) if not skipped else None
        goal, met = goal_text(step, speed, memory)
        lines.append(f"| {label} | {ours_txt}, {fmt_mem(ours)} | {ref_txt}"
                     f"{'' if skipped else ', ' + fmt_mem(ref)} | {fmt_ratio(speed)}; {fmt_ratio(memory)} | {goal} |")
        result["rows"].append({"step": step, "ours": o, "reference": t, "ours_memory_bytes": mem(ours)[0],
                               "reference_memory_bytes": mem(ref)[0], "memory_kind": mem(ours)[1],
                               "ratio": speed, "ratio_kind": "time" if step == "train" else "pairs/s",
                               "memory_ratio": memory, "goal": goal or None, "goal_met": met})
    text = "\n".join(lines)
    print(text)
    result["table"] = text
    with open(os.path.join(d, "device-check.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 1 if result["parity_pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
