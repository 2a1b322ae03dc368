#!/usr/bin/env python3
"""Write a Salesforce/blip2-opt-2.7b-shaped checkpoint with random weights (and a LoRA adapter for it).

The CPU/GPU benchmarks need the full BLIP-2 OPT-2.7b shapes, but this machine has no internet: the
`Blip2Config` is built by hand with the real sizes (BLIP-2 OPT-2.7b: EVA ViT-g 39 layers, 32 queries, OPT 32 layers) and the
3.87 B parameters are drawn at random, float32 (15.5 GB on disk). Captions from it are meaningless.

usage:
  .venv-ref/bin/python benches/make_random_checkpoint.py [--preset full|mid|tiny] [--out DIR]
      [--adapter-out DIR] [--seed K] [--max-shard-size 2GB] [--dtype f32|bf16] [--no-check]
      [--json-out FILE]
  .venv-ref/bin/python benches/make_random_checkpoint.py --check-only [--out DIR] [--adapter-out DIR]

  --preset full      (default) every size of blip2-opt-2.7b: 3.87 B parameters, 15.5 GB
  --preset mid       the real widths with few layers, for CPU training benchmarks: vision 1408 hidden /
                     6144 ffn / 16 heads / 4 layers / image 224 / patch 14; Q-Former 768 / 12 heads /
                     4 layers / cross-attention every 2nd layer (layers 0 and 2); OPT 2560 / 10240 ffn /
                     32 heads / 4 layers / vocab 50272; 32 query tokens. 0.59 B parameters, 2.35 GB
  --preset tiny      the same structure (vocabularies, 224 images, 32 queries, 2 layers per tower) at
                     width 64: the GPU check's dry run on a CPU (~7 M parameters)
  --dtype bf16       store bfloat16 (the same draws, rounded): half the disk and load time
  --out DIR          checkpoint (default <repo>/.bench-ckpt/blip2-opt-2.7b-random; mid:
                     .bench-ckpt/blip2-mid-random)
  --adapter-out DIR  PEFT LoRA adapter (default .bench-ckpt/blip2idc-adapter-random; mid:
                     .bench-ckpt/blip2idc-adapter-mid-random)
  --seed K           default 0; the output is a deterministic function of the seed
  --max-shard-size   shard size as `save_pretrained` takes it (default "2GB")
  --no-check         skip the final reload + forward check
  --check-only       only run the check on an existing checkpoint

What is written (the layout `save_pretrained(safe_serialization=True, max_shard_size=...)` writes):
  DIR/config.json, generation_config.json, model-0000i-of-0000n.safetensors (metadata {"format": "pt"}),
  model.safetensors.index.json (same sharding as transformers 4.35's `shard_checkpoint`, tied
  `language_model.lm_head.weight` absent), tokenizer.json (a copy of tests/fixtures/blip2/tokenizer.json:
  509 tokens only, so ids >= 509 that the random model emits decode to nothing), tokenizer_config.json,
  special_tokens_map.json, preprocessor_config.json (BlipImageProcessor 224x224, bicubic, CLIP mean/std)
  and a RANDOM_WEIGHTS marker.
  ADAPTER_DIR/adapter_config.json, adapter_model.safetensors: r=8, alpha=16, dropout 0.05, bias "none",
  the BLIP2IDC authors' target_modules; lora_A ~ N(0, 1/in), lora_B ~ N(0, 0.02^2) (non-zero).

Initialisation (as transformers' `Blip2PreTrainedModel._init_weights`, std = initializer_range 0.02):
Linear/Conv2d/Embedding weights N(0, 0.02^2), their biases 0 (the vision qkv bias too); vision class and
position embeddings truncated N(0, 0.02^2); LayerNorm weight 1, bias 0. One deviation: `query_tokens`
is N(0, 0.02^2) instead of transformers' zeros, so that the 32 queries differ.

Memory: the model is built on the meta device (no storage); each shard's tensors are materialised,
initialised, written and freed in turn, so the peak RSS stays around two shards (~4-5 GB with 2 GB
shards) instead of the 15.5 GB + copies of a materialised `save_pretrained`. The check at the end runs
in a child process: `from_pretrained(low_cpu_mem_usage=True)` (~15.5 GB resident) and one 224x224
forward with input_ids [[2]], base and with the adapter; it prints max |logit| and both peaks.

Requirements: benches/requirements-reference.txt. Takes ~5-10 min on 2 cores; ~16 GB of disk
(--preset mid: ~1-2 min, ~2.5 GB).
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "blip2")
TOKENIZER_JSON = os.path.join(FIXTURES, "tokenizer.json")
DEFAULT_OUT = os.path.join(REPO, ".bench-ckpt", "blip2-opt-2.7b-random")
DEFAULT_ADAPTER_OUT = os.path.join(REPO, ".bench-ckpt", "blip2idc-adapter-random")
DEFAULT_OUT_MID = os.path.join(REPO, ".bench-ckpt", "blip2-mid-random")
DEFAULT_ADAPTER_OUT_MID = os.path.join(REPO, ".bench-ckpt", "blip2idc-adapter-mid-random")
DEFAULT_OUT_TINY = os.path.join(REPO, ".bench-ckpt", "blip2-tiny-random")
DEFAULT_ADAPTER_OUT_TINY = os.path.join(REPO, ".bench-ckpt", "blip2idc-adapter-tiny-random")
# Layer counts per preset (vision, Q-Former, OPT); every width is blip2-opt-2.7b's except in "tiny".
PRESET_LAYERS = {"full": (39, 12, 32), "mid": (4, 4, 4), "tiny": (2, 2, 2)}
# "tiny" (the device check's dry run): widths 64, ffn 128, 4 heads; the real vocabularies, image size
# and query count, so every code path (sharding, the tied lm_head, the image token) is the full one's.
TINY_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
# blip2-opt-2.7b's image token (transformers >= 4.46 configs: image_token_index / image_token_id).
IMAGE_TOKEN_ID = 50265

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
INIT_STD = 0.02
LORA_B_STD = 0.02
# The BLIP2IDC authors' target_modules (every released adapter_config.json).
AUTHORS_TARGETS = [f"qformer.encoder.layer.{i}.crossattention.attention.query" for i in range(12)] + [
    "value", "key", "qkv", "q_proj", "k_proj", "v_proj"]
RANDOM_MARKER_TEXT = ("Random weights generated by benches/make_random_checkpoint.py: "
                      "captions from this checkpoint are meaningless.\n")


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(n):
    return f"{n / 1024 ** 3:.2f} GiB"


def quiet_libraries():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")


def blip2_opt_27b_config(preset="full"):
    """Blip2Config of Salesforce/blip2-opt-2.7b, written out (every size explicit); preset "mid" keeps
    every width and has 4 vision, 4 Q-Former and 4 OPT layers."""
    from transformers import Blip2Config

    import inspect

    n_vision, n_qformer, n_text = PRESET_LAYERS[preset]
    vision = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=n_vision, num_attention_heads=16,
                  image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
                  initializer_range=INIT_STD)
    qformer = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=n_qformer, num_attention_heads=12,
                   intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                   cross_attention_frequency=2, encoder_hidden_size=1408, initializer_range=INIT_STD)
    text = dict(model_type="opt", vocab_size=50272, hidden_size=2560, word_embed_proj_dim=2560,
                ffn_dim=10240, num_hidden_layers=n_text, num_attention_heads=32, max_position_embeddings=2048,
                activation_function="relu", do_layer_norm_before=True, enable_bias=True,
                layer_norm_elementwise_affine=True, bos_token_id=2, eos_token_id=50118, pad_token_id=1,
                init_std=INIT_STD, tie_word_embeddings=True)
    if preset == "tiny":
        vision.update(TINY_WIDTHS)
        qformer.update(TINY_WIDTHS, encoder_hidden_size=TINY_WIDTHS["hidden_size"])
        text.update(hidden_size=64, word_embed_proj_dim=64, ffn_dim=128, num_attention_heads=4)
    extra = {}
    # Newer transformers place the query outputs on image tokens in input_ids (and later versions need
    # them); the language model's input is the same as 4.35's [queries, bos] either way.
    params = inspect.signature(Blip2Config.__init__).parameters
    for name in ("image_token_index", "image_token_id"):
        if name in params:
            extra[name] = IMAGE_TOKEN_ID
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32,
                       initializer_range=INIT_STD, initializer_factor=1.0, **extra)


def init_tensor(name, module, shape, gen):
    """A float32 tensor for parameter `name` of `module`, initialised as described in the docstring."""
    import torch
    from torch import nn

    t = torch.empty(shape, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    kind = type(module).__name__
    if isinstance(module, nn.LayerNorm):
        return t.fill_(1.0) if leaf == "weight" else t.zero_()
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        return t.normal_(0.0, INIT_STD, generator=gen) if leaf == "weight" else t.zero_()
    if kind == "Blip2VisionEmbeddings" and leaf in ("class_embedding", "position_embedding"):
        return nn.init.trunc_normal_(t, mean=0.0, std=INIT_STD, generator=gen)
    if name == "query_tokens":
        return t.normal_(0.0, INIT_STD, generator=gen)
    raise RuntimeError(f"no init rule for {name} {tuple(shape)} in {kind}")


def build_meta_model(config):
    import torch
    from transformers import Blip2ForConditionalGeneration

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    lm = model.language_model
    assert lm.lm_head.weight is lm.model.decoder.embed_tokens.weight, "lm_head is not tied"
    return model.eval()


def plan_shards(state_dict, max_shard_size, bytes_per_value=4):
    """transformers 4.35's own sharding (`shard_checkpoint`) applied to meta tensors.

    `shard_checkpoint` puts tensors that share storage in one shard; every meta tensor reports storage
    pointer 0, so key by tensor identity instead (no sharing is left once the tied lm_head is dropped).
    """
    from unittest import mock

    from transformers import modeling_utils

    if bytes_per_value == 4 and hasattr(modeling_utils, "shard_checkpoint"):
        with mock.patch.object(modeling_utils, "id_tensor_storage", lambda t: id(t)):
            return modeling_utils.shard_checkpoint(state_dict, max_shard_size=max_shard_size,
                                                   weights_name=modeling_utils.SAFE_WEIGHTS_NAME)
    return plan_shards_like_435(state_dict, max_shard_size, bytes_per_value)


def parse_size(size):
    """"2GB" -> 2 * 10**9, "2GiB" -> 2 * 2**30 (transformers' convert_file_size_to_int)."""
    if isinstance(size, int):
        return size
    units = {"GIB": 2 ** 30, "MIB": 2 ** 20, "KIB": 2 ** 10, "GB": 10 ** 9, "MB": 10 ** 6, "KB": 10 ** 3}
    for unit, factor in units.items():
        if size.upper().endswith(unit):
            value = int(size[:-len(unit)]) * factor
            return value // 8 if size.endswith("b") else value  # "Gb": bits
    return int(size)


def plan_shards_like_435(state_dict, max_shard_size, bytes_per_value):
    """4.35's `shard_checkpoint` (removed from later transformers), for meta tensors: tensors in order,
    a new shard when the next one would pass the limit; one shard -> model.safetensors, no index."""
    limit = parse_size(max_shard_size)
    blocks, size, total = [{}], 0, 0
    for name, t in state_dict.items():
        n = t.numel() * bytes_per_value
        if size + n > limit and blocks[-1]:
            blocks.append({})
            size = 0
        blocks[-1][name] = t
        size += n
        total += n
    if len(blocks) == 1:
        return {"model.safetensors": blocks[0]}, None
    shards, weight_map = {}, {}
    for i, block in enumerate(blocks):
        file = f"model-{i + 1:05d}-of-{len(blocks):05d}.safetensors"
        shards[file] = block
        weight_map.update({k: file for k in block})
    return shards, {"metadata": {"total_size": total}, "weight_map": weight_map}


def write_checkpoint(model, out, seed, max_shard_size, dtype="f32"):
    import torch
    from safetensors.torch import save_file
    from transformers import BlipImageProcessor, Blip2Processor, PreTrainedTokenizerFast

    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):  # stale shards of an earlier run
        if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".index.json")):
            os.remove(os.path.join(out, f))

    # As save_pretrained: config (dtype, architectures), generation config.
    model.config.torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)

    state_dict = model.state_dict()
    del state_dict["language_model.lm_head.weight"]  # tied to embed_tokens; save_pretrained drops it
    modules = dict(model.named_modules())
    shards, index = plan_shards(state_dict, max_shard_size, 2 if dtype == "bf16" else 4)
    gen = torch.Generator().manual_seed(seed)
    n_params, t0 = 0, time.perf_counter()
    for i, (shard_file, shard) in enumerate(shards.items()):
        tensors = {}
        for name, meta in shard.items():
            mod_name = name.rsplit(".", 1)[0] if "." in name else ""
            t = init_tensor(name, modules[mod_name], meta.shape, gen)
            tensors[name] = t.to(torch.bfloat16) if dtype == "bf16" else t
            n_params += meta.numel()
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise RuntimeError(f"non-finite values in {name}")
        save_file(tensors, os.path.join(out, shard_file), metadata={"format": "pt"})
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
        log(f"  [{i + 1}/{len(shards)}] {shard_file}: {len(shard)} tensors, {gib(size)} "
            f"({time.perf_counter() - t0:.0f} s, peak RSS {gib(peak_rss_bytes())})")
    if index is not None:
        with open(os.path.join(out, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # Tokenizer and image processor, as the fixtures write them (Blip2Processor.save_pretrained),
    # then the committed tokenizer.json byte for byte.
    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER_JSON, bos_token="</s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    image_size = model.config.vision_config.image_size
    proc = BlipImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=3,
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    Blip2Processor(image_processor=proc, tokenizer=tok).save_pretrained(out)
    shutil.copyfile(TOKENIZER_JSON, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "RANDOM_WEIGHTS"), "w") as f:
        f.write(RANDOM_MARKER_TEXT)
    return n_params, len(shards)


def write_adapter(model, out_dir, adapter_out, seed):
    """PEFT LoRA adapter on the meta model: only the LoRA matrices get storage."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model.name_or_path = os.path.basename(os.path.normpath(out_dir))  # -> base_model_name_or_path
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", target_modules=list(AUTHORS_TARGETS))
    with torch.device("meta"):
        pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    n_modules, n_params = 0, 0
    with torch.no_grad():
        for name, mod in sorted(pm.named_modules(), key=lambda kv: kv[0]):
            if not isinstance(mod, LoraLayer):
                continue
            a = mod.lora_A["default"].to_empty(device="cpu").weight  # [r, in]
            b = mod.lora_B["default"].to_empty(device="cpu").weight  # [out, r]
            a.normal_(0.0, 1.0 / a.shape[1] ** 0.5, generator=gen)
            b.normal_(0.0, LORA_B_STD, generator=gen)
            n_modules += 1
            n_params += a.numel() + b.numel()
    pm.save_pretrained(adapter_out, safe_serialization=True)
    return n_modules, n_params


def check(out, adapter_out):
    """Reload from disk (low_cpu_mem_usage) and run one forward, base and with the adapter."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, info = Blip2ForConditionalGeneration.from_pretrained(
        out, torch_dtype=torch.float32, low_cpu_mem_usage=True, output_loading_info=True)
    model.eval()
    load_s = time.perf_counter() - t0
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"loading info not clean: {bad}")
    n = sum(p.numel() for p in model.parameters())
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[model.config.text_config.bos_token_id]])
    res = {"params": n, "load_s": load_s}
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(pixel_values=pixel_values, input_ids=input_ids).logits
        res["forward_s"] = time.perf_counter() - t0
        res["logits_shape"] = list(logits.shape)
        res["finite"] = bool(torch.isfinite(logits).all())
        res["max_abs_logit"] = float(logits.abs().max())
        if adapter_out:
            from peft import PeftModel

            pm = PeftModel.from_pretrained(model, adapter_out).eval()
            la = pm(pixel_values=pixel_values, input_ids=input_ids).logits
            res["adapter_finite"] = bool(torch.isfinite(la).all())
            res["adapter_max_abs_logit"] = float(la.abs().max())
            res["adapter_max_abs_diff"] = float((la - logits).abs().max())
    res["peak_rss_bytes"] = peak_rss_bytes()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESET_LAYERS), default="full",
                   help="full: blip2-opt-2.7b; mid: its widths with 4 layers per tower")
    p.add_argument("--out", default=None, help=f"default {DEFAULT_OUT} (mid: {DEFAULT_OUT_MID})")
    p.add_argument("--adapter-out", default=None,
                   help=f"default {DEFAULT_ADAPTER_OUT} (mid: {DEFAULT_ADAPTER_OUT_MID})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                   help="stored precision (bf16: the same draws rounded, half the disk; the GPU check uses it)")
    p.add_argument("--no-check", action="store_true", help="skip the reload + forward check")
    p.add_argument("--json-out", help="also write the summary (versions, sizes, times) to this file")
    p.add_argument("--check-only", action="store_true", help="only check an existing checkpoint")
    args = p.parse_args()
    if args.out is None:
        args.out = {"mid": DEFAULT_OUT_MID, "tiny": DEFAULT_OUT_TINY}.get(args.preset, DEFAULT_OUT)
    if args.adapter_out is None:
        args.adapter_out = {"mid": DEFAULT_ADAPTER_OUT_MID, "tiny": DEFAULT_ADAPTER_OUT_TINY}.get(
            args.preset, DEFAULT_ADAPTER_OUT)
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT stores target_modules as a set: fix the hash seed so adapter_config.json is reproducible.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:])
    quiet_libraries()
    import torch

    if args.check_only:
        res = check(args.out, args.adapter_out if os.path.isdir(args.adapter_out) else None)
        print(json.dumps(res), flush=True)
        if not (res["finite"] and res.get("adapter_finite", True)):
            raise SystemExit("non-finite logits")
        return

    torch.manual_seed(args.seed)
    probe = os.path.abspath(args.out)
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    reused = sum(e.stat().st_size for e in os.scandir(args.out) if e.name.startswith("model")) \
        if os.path.isdir(args.out) else 0  # stale shards are deleted first
    t_start = time.perf_counter()
    config = blip2_opt_27b_config(args.preset)
    model = build_meta_model(config)
    per_value = 2 if args.dtype == "bf16" else 4
    need = int(sum(p.numel() for p in model.parameters()) * per_value * 1.05) + 1024 ** 3  # tied lm_head once
    if shutil.disk_usage(probe).free + reused < need:
        raise SystemExit(f"only {gib(shutil.disk_usage(probe).free)} free under {probe}: ~{gib(need)} needed")
    log(f"writing {args.out} (preset {args.preset}, seed {args.seed}, shards of {args.max_shard_size})")
    n_params, n_shards = write_checkpoint(model, args.out, args.seed, args.max_shard_size, args.dtype)
    log(f"wrote {n_params:,} parameters in {n_shards} shards")
    n_mod, n_lora = write_adapter(model, args.out, args.adapter_out, args.seed)
    log(f"wrote {args.adapter_out}: {n_mod} LoRA modules, {n_lora:,} parameters")
    import peft
    import transformers

    summary = {"preset": args.preset, "dtype": args.dtype, "torch_version": torch.__version__,
               "transformers_version": transformers.__version__, "peft_version": peft.__version__, "out": args.out, "adapter_out": args.adapter_out, "params": n_params,
               "shards": n_shards, "lora_modules": n_mod, "lora_params": n_lora, "write_s": time.perf_counter() - t_start,
               "write_peak_rss_bytes": peak_rss_bytes()}
    log(f"written in {summary['write_s']:.0f} s, peak RSS {gib(summary['write_peak_rss_bytes'])}")
    del model

    if not args.no_check:
        # A child process, so that its peak RSS is its own.
        cmd = [sys.executable, os.path.abspath(__file__), "--check-only", "--out", args.out,
               "--adapter-out", args.adapter_out]
        log("checking: " + " ".join(cmd))
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise SystemExit(f"check failed ({out.returncode})")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        summary["check"] = res
        log(f"check: {res['params']:,} params loaded in {res['load_s']:.0f} s, forward {res['forward_s']:.1f} s, "
            f"logits {res['logits_shape']} finite={res['finite']} max|logit|={res['max_abs_logit']:.4g}; "
            f"adapter max|logit|={res.get('adapter_max_abs_logit', float('nan')):.4g} "
            f"max|delta|={res.get('adapter_max_abs_diff', float('nan')):.3g}; "
            f"peak RSS {gib(res['peak_rss_bytes'])}")
    print(json.dumps(summary, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(summary, step="checkpoint"), f, indent=2)


if __name__ == "__main__":
    main()
