#!/usr/bin/env python3
"""Reference side of the BLIP2IDC generation benchmark: PyTorch + transformers 4.35.0 (+ PEFT 0.6.2).

The Rust benchmark runs this script as a subprocess on the same machine and compares its pairs/s and
peak memory with its own. It times exactly what the BLIP2IDC authors run at test time:
``Blip2ForConditionalGeneration.generate(pixel_values=batch, max_new_tokens=77)`` (greedy, the
transformers 4.35 defaults: no other generation option is passed), under ``torch.inference_mode()``.

usage:
  python benches/model_reference.py --model DIR [--adapter DIR] --pairs N --batch B
      [--max-new-tokens 77] [--threads T] [--dtype f32] [--image-size S] [--seed K]
      [--pixels FILE] [--warmup-max-new-tokens W] [--device cpu|cuda] [--json]

  --model DIR        checkpoint directory as `save_pretrained` writes it
  --adapter DIR      PEFT LoRA adapter; loaded with `PeftModel.from_pretrained`, then `merge_and_unload()`
  --pairs N          number of image pairs (= generate rows) timed
  --batch B          rows per `generate` call (the last batch may be smaller)
  --max-new-tokens   default 77, as the authors
  --threads T        `torch.set_num_threads(T)` (also OMP/MKL_NUM_THREADS); default: all cores
  --dtype            f32 (default) | f16 | bf16: `torch_dtype` of the model and of the pixel values
  --image-size S     vision input size; default: the checkpoint's `vision_config.image_size`
  --seed K           seed of the synthetic pixel values (and torch's RNG); default 0
  --pixels FILE      raw little-endian float32 pixel values of shape [N, 3, S, S] (C order), as the Rust
                     benchmark writes them, so that both sides see identical inputs. Without it the script
                     draws them with numpy: uniform [0, 1) "images" normalised with the CLIP mean/std, seeded
  --warmup-max-new-tokens W   max_new_tokens of the untimed warm-up generate on the first batch
                     (default: --max-new-tokens; on the full-size model one warm-up call costs as much as
                     a timed batch, ~3 min on 2 cores; a few tokens warm the same code paths; 0 skips it)
  --device           cpu (default) or cuda: model and pixels on the GPU, each timed generate ends with
                     torch.cuda.synchronize(); adds peak_gpu_bytes (torch.cuda.max_memory_allocated)
  --json             print one JSON object on stdout instead of a human-readable summary

Any transformers version: 4.35 (the reference) returns [bos, new tokens] per row; later versions that
put the queries on image tokens return [image tokens..., bos, new tokens]. New tokens are counted
after the prompt either way (the language model's input is the same: the queries, then bos).

JSON output (one line on stdout; everything else, warnings included, goes to stderr):
  {"impl": "pytorch", "pairs": N, "batch": B, "pairs_per_s": float, "generate_s": float, "tokens": int,
   "load_s": float, "peak_rss_bytes": int, "torch_version": str, "threads": int,
   ... extra keys: "transformers_version", "peft_version", "dtype", "image_size", "max_new_tokens",
   "adapter", "warmup_s", "steps", "vm_hwm_bytes", "load_peak_rss_bytes", "generate_peak_rss_bytes",
   "rss_after_load_bytes", "eos_token_id", "rows_stopped_at_eos"}

  pairs_per_s   N / generate_s; generate_s is the summed wall time of the timed `generate` calls
                (the warm-up call on the first batch is not timed; see warmup_s)
  tokens        new tokens per row up to and including the first eos (or all of them when no eos), summed:
                what had to be computed. transformers 4.35 puts the bos prompt id first in each output row
                and pads rows that finished early with pad_token_id until the whole batch stops.
  steps         sum over batches of rows x decoding steps actually run (>= tokens: padded rows still run)
  load_s        `from_pretrained` (+ adapter load and merge) wall time
  peak_rss_bytes   peak resident set size of the whole process: getrusage(RUSAGE_SELF).ru_maxrss * 1024
  vm_hwm_bytes     the same peak read from /proc/self/status VmHWM
  load_peak_rss_bytes / generate_peak_rss_bytes   the peak up to the end of loading, and the peak while
                generating (the high-water mark is reset through /proc/self/clear_refs after loading;
                null when the kernel refuses). peak_rss_bytes is the larger of the two.

Requirements: benches/requirements-reference.txt (torch 2.15.0, transformers 4.35.0, peft 0.6.2,
accelerate 0.23.0, numpy). Runs offline.
"""
import argparse
import contextlib
import json
import os
import sys
import time

from bench_common import log, proc_status_kib, reset_peak_rss, ru_maxrss_bytes

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained layout)")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory (merged after loading)")
    p.add_argument("--pairs", type=int, required=True, help="number of pairs timed")
    p.add_argument("--batch", type=int, required=True, help="pairs per generate call")
    p.add_argument("--max-new-tokens", type=int, default=77)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    p.add_argument("--image-size", type=int, default=0, help="0: the checkpoint's vision image_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixels", help="raw little-endian float32 file of shape [N, 3, S, S]")
    p.add_argument("--warmup-max-new-tokens", type=int, default=None,
                   help="max_new_tokens of the warm-up generate (default: --max-new-tokens; 0: no warm-up)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    if a.pairs < 1 or a.batch < 1 or a.max_new_tokens < 1 or a.threads < 0:
        p.error("--pairs, --batch and --max-new-tokens must be >= 1, --threads >= 0")
    return a


def make_pixels(args, image_size):
    import numpy as np

    shape = (args.pairs, 3, image_size, image_size)
    if args.pixels:
        data = np.fromfile(args.pixels, dtype="<f4")
        if data.size != np.prod(shape):
            raise SystemExit(f"--pixels {args.pixels}: {data.size} float32 values, expected "
                             f"{int(np.prod(shape))} for shape {list(shape)}")
        return data.reshape(shape)
    rng = np.random.default_rng(args.seed)
    img = rng.random(shape, dtype=np.float32)  # an "image" in [0, 1), as after rescale 1/255
    mean = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CLIP_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((img - mean) / std).astype(np.float32)


def prompt_length(rows, bos_id):
    """Length of the prompt generate echoes: up to and including the first bos of the first row (4.35:
    [bos]; later versions: [image tokens..., bos]); the prompt is the same for every row."""
    first = rows[0].tolist()
    return first.index(bos_id) + 1 if bos_id in first else 1


def count_tokens(rows, eos_id, prompt_len=1):
    """New tokens per row up to and including the first eos (all of them without one)."""
    total, stopped = 0, 0
    for row in rows.tolist():
        new = row[prompt_len:]
        if eos_id in new:
            total += new.index(eos_id) + 1
            stopped += 1
        else:
            total += len(new)
    return total, stopped


def run(args):
    if args.threads:
        # Before torch is imported, so that OpenMP/MKL pools are sized once.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import numpy as np  # noqa: F401  (make_pixels)
    import torch
    import transformers
    from transformers import Blip2ForConditionalGeneration

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    t0 = time.perf_counter()
    model = Blip2ForConditionalGeneration.from_pretrained(args.model, torch_dtype=dtype)
    peft_version = None
    if args.adapter:
        import peft
        from peft import PeftModel

        peft_version = peft.__version__
        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    model.eval()
    if cuda:
        model = model.to(device)
        sync()
    load_s = time.perf_counter() - t0
    rss_after_load = proc_status_kib("VmRSS")
    load_peak = ru_maxrss_bytes()
    load_hwm = proc_status_kib("VmHWM")
    peak_reset = reset_peak_rss()

    image_size = args.image_size or model.config.vision_config.image_size
    pixels = torch.from_numpy(make_pixels(args, image_size)).to(device=device, dtype=dtype)
    batches = [pixels[i:i + args.batch] for i in range(0, args.pairs, args.batch)]
    # What 4.35's generate stops on: the language model's generation config, built from text_config.
    eos_id = model.language_model.generation_config.eos_token_id
    if eos_id is None:
        eos_id = model.config.text_config.eos_token_id
    bos_id = model.config.text_config.bos_token_id
    if isinstance(eos_id, list):
        raise SystemExit(f"several eos ids {eos_id}: not supported by the token count")

    with torch.inference_mode():
        warmup_tokens = args.max_new_tokens if args.warmup_max_new_tokens is None else args.warmup_max_new_tokens
        t0 = time.perf_counter()
        if warmup_tokens > 0:
            model.generate(pixel_values=batches[0], max_new_tokens=warmup_tokens)
            sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        warmup_s = time.perf_counter() - t0

        generate_s, tokens, steps, stopped = 0.0, 0, 0, 0
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            rows = model.generate(pixel_values=batch, max_new_tokens=args.max_new_tokens)
            sync()
            dt = time.perf_counter() - t0
            generate_s += dt
            prompt = prompt_length(rows, bos_id)
            n, s = count_tokens(rows, eos_id, prompt)
            tokens += n
            stopped += s
            steps += rows.shape[0] * (rows.shape[1] - prompt)
            log(f"batch {i + 1}/{len(batches)}: {rows.shape[0]} rows, {rows.shape[1] - prompt} steps, "
                f"{n} tokens, {dt:.3f} s")

    gen_peak = ru_maxrss_bytes() if peak_reset else None
    gen_hwm = proc_status_kib("VmHWM") if peak_reset else None
    peak = max(load_peak, gen_peak or 0)
    hwm = None if load_hwm is None else max(load_hwm, gen_hwm or 0)
    res = {
        "impl": "pytorch",
        "pairs": args.pairs,
        "batch": args.batch,
        "pairs_per_s": args.pairs / generate_s,
        "generate_s": generate_s,
        "tokens": tokens,
        "load_s": load_s,
        "peak_rss_bytes": peak,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "transformers_version": transformers.__version__,
        "peft_version": peft_version,
        "dtype": args.dtype,
        "image_size": image_size,
        "max_new_tokens": args.max_new_tokens,
        "adapter": bool(args.adapter),
        "warmup_s": warmup_s,
        "steps": steps,
        "eos_token_id": eos_id,
        "rows_stopped_at_eos": stopped,
        "vm_hwm_bytes": hwm,
        "rss_after_load_bytes": rss_after_load,
        "load_peak_rss_bytes": load_peak,
        "generate_peak_rss_bytes": gen_peak,
        "device": args.device,
    }
    if cuda:
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
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
    print(f"pytorch {res['torch_version']} (transformers {res['transformers_version']}), "
          f"{res['dtype']}, {res['threads']} threads, adapter: {'merged' if res['adapter'] else 'none'}")
    print(f"load:     {res['load_s']:.2f} s (warm-up generate {res['warmup_s']:.2f} s)")
    print(f"generate: {res['pairs']} pairs, batch {res['batch']}, {res['generate_s']:.3f} s, "
          f"{res['pairs_per_s']:.3f} pairs/s, {res['tokens']} tokens "
          f"({res['tokens'] / res['generate_s']:.1f} tokens/s, {res['rows_stopped_at_eos']} rows hit eos)")
    gp = res["generate_peak_rss_bytes"]
    print(f"peak RSS: {res['peak_rss_bytes'] / gib:.3f} GiB (VmHWM {(res['vm_hwm_bytes'] or 0) / gib:.3f} GiB; "
          f"load {res['load_peak_rss_bytes'] / gib:.3f} GiB, "
          f"generate {'n/a' if gp is None else f'{gp / gib:.3f} GiB'})")


if __name__ == "__main__":
    main()
