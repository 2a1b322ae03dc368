#!/usr/bin/env python3
"""Reference side of the BLIP2IDC LoRA training benchmark: PyTorch + transformers 4.35.0 + PEFT 0.6.2.

The Rust training benchmark runs this script as a subprocess on the same machine and compares its step
time and peak memory with its own. One step is what the BLIP2IDC authors' training loop does per batch:
``loss = model(pixel_values=pv, input_ids=labels, labels=labels).loss; loss.backward(); optimizer.step();
optimizer.zero_grad()`` with ``model.train()`` (dropout on: LoRA 0.05, Q-Former 0.1, OPT 0.1), AdamW on the
LoRA tensors only (PEFT freezes the base), no gradient accumulation, no AMP, no gradient checkpointing.

usage:
  python benches/train_reference.py --model DIR --batch B [--max-length 30] [--threads T]
      [--adapter DIR] [--steps N] [--lr 5e-5] [--seed K] [--dtype f32|bf16|f16] [--device cpu|cuda] [--json]

  --model DIR       checkpoint directory as `save_pretrained` writes it (loaded with torch_dtype=--dtype)
  --batch B         pairs per step
  --max-length L    label length (default 30, as the authors' tokenizer call)
  --threads T       `torch.set_num_threads(T)` (also OMP/MKL_NUM_THREADS); default: torch's default
  --adapter DIR     continue from this PEFT adapter (`PeftModel.from_pretrained(..., is_trainable=True)`);
                    without it a fresh LoRA: `get_peft_model` with the BLIP2IDC LoraConfig (r=8, alpha=16,
                    dropout 0.05, bias "none", the authors' target_modules; A kaiming-uniform, B = 0)
  --steps N         timed steps (default 3), after one untimed warm-up step
  --lr              AdamW learning rate (default 5e-5, the authors' Emu run); betas 0.9/0.999, eps 1e-8,
                    weight_decay 0.01
  --seed K          seed of the inputs, of torch (LoRA init, dropout masks); default 0
  --dtype           base weights' dtype (default f32). PEFT 0.6.2 keeps the LoRA tensors float32 either way
  --device          cpu (default) or cuda (then peak_gpu_bytes = torch.cuda.max_memory_allocated)
  --json            print one JSON object on stdout instead of a human-readable summary

Inputs (seeded, identical for every run with the same --seed, --batch, checkpoint):
  rng = numpy.random.default_rng(seed)
  pixel_values = (rng.random((B, 3, S, S), float32) - CLIP_MEAN) / CLIP_STD   (S = vision_config.image_size)
  labels = rng.integers(4, V, size=(B, L)) (int64, V = text_config.vocab_size); labels[:, 0] = 2 (bos)
  input_ids = labels, no attention_mask; the loss is transformers 4.35's (logits[:, -L:], shift, mean CE).
The same batch is used for every step.

JSON output (one line on stdout; everything else, warnings included, goes to stderr):
  {"impl": "pytorch+peft", "step_s": median of the timed steps, "steps": N, "batch": B,
   "peak_rss_bytes": whole-process peak RSS (getrusage ru_maxrss, KiB * 1024),
   "vm_hwm_bytes": the same peak from /proc/self/status VmHWM,
   "rss_after_load_bytes": VmRSS once the model and the LoRA are built (before any step),
   "load_peak_rss_bytes": the peak up to then,
   "peak_rss_during_steps_bytes": the peak while stepping, warm-up included (Adam state, activations,
        gradients); the high-water mark is reset through /proc/self/clear_refs after loading, as
        benches/model_reference.py does; null when the kernel refuses,
   "trainable_params": LoRA parameters, "torch_version", "threads",
   ... extra keys: "transformers_version", "peft_version", "dtype", "device", "image_size", "vocab_size",
   "num_query_tokens", "max_length", "lora_modules", "total_params", "adapter", "lr", "seed", "load_s",
   "warmup_s", "step_times_s" (every timed step), "step_mean_s", "losses" (warm-up first),
   "peak_gpu_bytes" (cuda only)}

Requirements: benches/requirements-reference.txt. Runs offline.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

from bench_common import log, proc_status_kib, reset_peak_rss, ru_maxrss_bytes

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS_ID = 2
# The BLIP2IDC authors' target_modules (every released adapter_config.json).
AUTHORS_TARGETS = [f"qformer.encoder.layer.{i}.crossattention.attention.query" for i in range(12)] + [
    "value", "key", "qkv", "q_proj", "k_proj", "v_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained layout)")
    p.add_argument("--batch", type=int, required=True, help="pairs per step")
    p.add_argument("--max-length", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--adapter", help="PEFT LoRA adapter to continue from (default: a fresh LoRA)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    if a.batch < 1 or a.max_length < 2 or a.steps < 1 or a.threads < 0:
        p.error("--batch and --steps must be >= 1, --max-length >= 2, --threads >= 0")
    return a


def make_inputs(batch, image_size, max_length, vocab_size, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.random((batch, 3, image_size, image_size), dtype=np.float32)  # an "image" in [0, 1)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CLIP_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = ((img - mean) / std).astype(np.float32)
    labels = rng.integers(4, vocab_size, size=(batch, max_length), dtype=np.int64)
    labels[:, 0] = BOS_ID
    return pixels, labels


def run(args):
    if args.threads:
        # Before torch is imported, so that OpenMP/MKL pools are sized once.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import transformers
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import Blip2ForConditionalGeneration

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")

    t0 = time.perf_counter()
    model = Blip2ForConditionalGeneration.from_pretrained(args.model, torch_dtype=dtype)
    if cuda:
        model = model.to(device)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    else:
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", target_modules=list(AUTHORS_TARGETS))
        model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    n_lora_modules = sum(1 for m in model.modules() if isinstance(m, LoraLayer))
    lora_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    load_s = time.perf_counter() - t0

    cfg = model.get_base_model().config
    image_size = cfg.vision_config.image_size
    vocab = cfg.text_config.vocab_size
    pixels, labels = make_inputs(args.batch, image_size, args.max_length, vocab, args.seed)
    pixels = torch.from_numpy(pixels).to(device=device, dtype=dtype)
    labels = torch.from_numpy(labels).to(device)

    rss_after_load = proc_status_kib("VmRSS")
    load_peak = ru_maxrss_bytes()
    load_hwm = proc_status_kib("VmHWM")
    peak_reset = reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(pixel_values=pixels, input_ids=labels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        return float(loss.detach())

    losses = []
    t0 = time.perf_counter()
    losses.append(step())
    warmup_s = time.perf_counter() - t0
    log(f"warm-up step: {warmup_s:.3f} s, loss {losses[0]:.4f}")
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
        log(f"step {i + 1}/{args.steps}: {times[-1]:.3f} s, loss {losses[-1]:.4f}")

    steps_peak = ru_maxrss_bytes() if peak_reset else None
    steps_hwm = proc_status_kib("VmHWM") if peak_reset else None
    res = {
        "impl": "pytorch+peft",
        "step_s": statistics.median(times),
        "steps": args.steps,
        "batch": args.batch,
        "peak_rss_bytes": max(load_peak, steps_peak or 0),
        "vm_hwm_bytes": None if load_hwm is None else max(load_hwm, steps_hwm or 0),
        "rss_after_load_bytes": rss_after_load,
        "load_peak_rss_bytes": load_peak,
        "peak_rss_during_steps_bytes": steps_peak,
        "vm_hwm_during_steps_bytes": steps_hwm,
        "trainable_params": trainable,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "transformers_version": transformers.__version__,
        "peft_version": peft.__version__,
        "dtype": args.dtype,
        "lora_dtypes": lora_dtypes,
        "device": args.device,
        "image_size": image_size,
        "vocab_size": vocab,
        "num_query_tokens": cfg.num_query_tokens,
        "max_length": args.max_length,
        "lora_modules": n_lora_modules,
        "total_params": total,
        "adapter": args.adapter,
        "lr": args.lr,
        "seed": args.seed,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "step_times_s": times,
        "step_mean_s": statistics.fmean(times),
        "losses": losses,
    }
    if cuda:
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        res["gpu_name"] = torch.cuda.get_device_name(device)
    return res


def main():
    args = parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Keep stdout for the result only: anything the libraries print goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        res = run(args)
    if args.json:
        print(json.dumps(res), flush=True)
        return
    gib = 1024 ** 3

    def g(n):
        return "n/a" if n is None else f"{n / gib:.3f} GiB"

    print(f"pytorch {res['torch_version']} + peft {res['peft_version']} (transformers "
          f"{res['transformers_version']}), {res['dtype']} base, LoRA {'/'.join(res['lora_dtypes'])}, "
          f"{res['device']}, {res['threads']} threads, adapter: {res['adapter'] or 'fresh'}")
    print(f"model:    {res['total_params']:,} parameters, {res['trainable_params']:,} trainable in "
          f"{res['lora_modules']} LoRA modules; load {res['load_s']:.2f} s")
    print(f"step:     batch {res['batch']}, max_length {res['max_length']}, median {res['step_s']:.3f} s "
          f"over {res['steps']} steps (mean {res['step_mean_s']:.3f} s; warm-up {res['warmup_s']:.3f} s); "
          f"losses {', '.join(f'{x:.4f}' for x in res['losses'])}")
    print(f"memory:   peak RSS {g(res['peak_rss_bytes'])} (VmHWM {g(res['vm_hwm_bytes'])}); after load "
          f"{g(res['rss_after_load_bytes'])}, load peak {g(res['load_peak_rss_bytes'])}, during steps "
          f"{g(res['peak_rss_during_steps_bytes'])}"
          + (f"; GPU peak {g(res['peak_gpu_bytes'])}" if "peak_gpu_bytes" in res else ""))


if __name__ == "__main__":
    main()
