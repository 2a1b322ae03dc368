//! Parity of the candle BLIP2IDC with transformers 4.35 + PEFT 0.6.2 on the committed tiny random
//! checkpoints (`tests/fixtures/blip2/`, written by `make_fixtures.py`): preprocessing, logits,
//! intermediate activations, greedy ids (with and without adapter, batched and one by one), captions,
//! and the `blip2idc caption --json` contract.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip2idc::model::ops::Mode;
use blip2idc::model::preprocess::{resize_bicubic, resize_bicubic_with, stack_pair, ImageProcessorConfig, PassOrder};
use blip2idc::model::{Blip2Idc, LoadOptions};
use candle_core::{DType, Device, IndexOp, Tensor};
use image::RgbImage;
use serde_json::Value;

const CHECKPOINTS: [&str; 2] = ["tiny-a", "tiny-b"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected").join(format!("{name}.safetensors")), &Device::Cpu).unwrap()
}

fn load(ckpt: &str, adapter: bool, merge: bool) -> Blip2Idc {
    Blip2Idc::load(&LoadOptions {
        checkpoint: dir().join(ckpt).to_string_lossy().into_owned(),
        adapter: adapter.then(|| dir().join(format!("{ckpt}-adapter"))),
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: merge,
    })
    .unwrap()
}

fn rgb(t: &Tensor) -> RgbImage {
    let (h, w, _) = t.dims3().unwrap();
    RgbImage::from_raw(w as u32, h as u32, t.flatten_all().unwrap().to_vec1::<u8>().unwrap()).unwrap()
}

fn max_diff_u8(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn pairs() -> usize {
    manifest()["pairs"].as_array().unwrap().len()
}

#[test]
fn stacking_and_bicubic_resize_are_pil_exact() {
    let pre = expected("preprocess");
    for i in 0..pairs() {
        let orig = rgb(&pre[&format!("pair{i}.original_rgb")]);
        let modi = rgb(&pre[&format!("pair{i}.modified_rgb")]);
        let stacked = stack_pair(&orig, &modi);
        let want = rgb(&pre[&format!("pair{i}.stacked")]);
        assert_eq!(max_diff_u8(&stacked, &want), 0, "pair {i}: stacked image differs from PIL");
        let r224 = resize_bicubic(&want, 224, 224);
        assert_eq!(max_diff_u8(&r224, &rgb(&pre[&format!("pair{i}.stacked_224")])), 0, "pair {i}: 224 resize");
        for ckpt in CHECKPOINTS {
            let exp = expected(ckpt);
            let size = manifest()["checkpoints"][ckpt]["image_size"].as_u64().unwrap() as u32;
            let proc =
                ImageProcessorConfig::from_file(&dir().join(ckpt).join("preprocessor_config.json"), size).unwrap();
            let resized = proc.resize(&want);
            // Exact against Pillow < 13 (the authors' and transformers 4.35's, our default), and in
            // Pillow 13's pass order against Pillow 13 (python-pillow/Pillow#9549).
            let legacy = rgb(&expected("resize_pillow11")[&format!("pair{i}.resized_{size}")]);
            assert_eq!(max_diff_u8(&resized, &legacy), 0, "{ckpt} pair {i}: differs from Pillow 11");
            let pillow13 = resize_bicubic_with(&want, size, size, PassOrder::Pillow13);
            let d = max_diff_u8(&pillow13, &rgb(&exp[&format!("pair{i}.resized_u8")]));
            assert_eq!(d, 0, "{ckpt} pair {i}: Pillow 13 pass order differs from Pillow 13");
            // Rescale and normalisation of Pillow 13's resize reproduce its pixel_values.
            let no_resize = ImageProcessorConfig { do_resize: false, ..proc.clone() };
            let pv = no_resize.pixel_values(&pillow13);
            let got = Tensor::from_vec(pv, (1, 3, size as usize, size as usize), &Device::Cpu).unwrap();
            let d = max_abs(&got, &exp[&format!("pair{i}.pixel_values")]);
            assert!(d < 1e-5, "{ckpt} pair {i}: pixel_values differ by {d}");
        }
    }
}

#[test]
fn decoding_files_matches_pil() {
    let pre = expected("preprocess");
    let limits = blip2idc::config::DecodeConfig { max_width: 4096, max_height: 4096, max_alloc_bytes: 1 << 28 };
    for (i, p) in manifest()["pairs"].as_array().unwrap().iter().enumerate() {
        for (field, name) in [("original", "original_rgb"), ("modified", "modified_rgb")] {
            let file = p[field].as_str().unwrap();
            let bytes = std::fs::read(dir().join(file)).unwrap();
            let img = blip2idc::decode::decode(&bytes, &limits, file).unwrap();
            let ours = blip2idc::model::preprocess::to_rgb(&img);
            let d = max_diff_u8(&ours, &rgb(&pre[&format!("pair{i}.{name}")]));
            assert_eq!(d, 0, "{file}: decoded RGB differs from PIL by {d} levels");
        }
    }
    // End to end, files → pixel_values: exact with Pillow 11 + BlipImageProcessor, and within two
    // levels of Pillow 13 (its new pass order, python-pillow/Pillow#9549, moves a few pixels).
    let legacy = expected("resize_pillow11");
    for ckpt in CHECKPOINTS {
        let exp = expected(ckpt);
        let model = load(ckpt, false, true);
        let no_resize = ImageProcessorConfig { do_resize: false, ..model.processor.clone() };
        for (i, p) in manifest()["pairs"].as_array().unwrap().iter().enumerate() {
            let read = |f: &str| {
                blip2idc::decode::decode(&std::fs::read(dir().join(p[f].as_str().unwrap())).unwrap(), &limits, f)
                    .unwrap()
            };
            let pv = model.processor.preprocess_pair(&read("original"), &read("modified"));
            let s = model.processor.height as usize;
            let got = Tensor::from_vec(pv, (1, 3, s, s), &Device::Cpu).unwrap();
            let pil11 = no_resize.pixel_values(&rgb(&legacy[&format!("pair{i}.resized_{s}")]));
            let pil11 = Tensor::from_vec(pil11, (1, 3, s, s), &Device::Cpu).unwrap();
            let d = max_abs(&got, &pil11);
            assert!(d < 1e-6, "{ckpt} pair {i}: pixel_values from files differ from Pillow 11's by {d}");
            let d = max_abs(&got, &exp[&format!("pair{i}.pixel_values")]);
            let two_levels = 2.0 / 255.0 / 0.2613; // the smallest CLIP std
            assert!(d <= two_levels + 1e-5, "{ckpt} pair {i}: pixel_values from files differ by {d}");
        }
    }
}

#[test]
fn adapter_targets_exactly_the_modules_peft_adapted() {
    for ckpt in CHECKPOINTS {
        let model = load(ckpt, true, true);
        let mut want: Vec<String> = manifest()["checkpoints"][ckpt]["adapter"]["adapted_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        want.sort();
        assert_eq!(model.adapted_modules, want, "{ckpt}");
        assert!(
            !model
                .adapted_modules
                .iter()
                .any(|m| m.ends_with("attention.attention.query") && !m.contains("crossattention")),
            "the Q-Former self-attention query must not be adapted"
        );
        assert!(model.adapted_modules.iter().any(|m| m.ends_with("crossattention.attention.query")));
    }
}

#[test]
fn logits_and_activations_match_the_reference() {
    for ckpt in CHECKPOINTS {
        let exp = expected(ckpt);
        for (variant, adapter, merge) in [("base", false, true), ("adapter", true, true), ("adapter", true, false)] {
            let model = load(ckpt, adapter, merge);
            let m = &model.model;
            let bos = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
            for i in 0..pairs() {
                let pv = &exp[&format!("pair{i}.pixel_values")];
                let logits = m.forward(pv, &bos, Mode::Inference).unwrap();
                let d = max_abs(&logits, &exp[&format!("pair{i}.logits.{variant}")]);
                assert!(d <= 1e-4, "{ckpt} {variant} (merged {merge}) pair {i}: logits max|Δ| = {d}");
            }
            let pv = &exp["pair0.pixel_values"];
            let emb = m.vision_model.embeddings.forward(pv).unwrap();
            assert!(max_abs(&emb, &exp[&format!("pair0.vision_embeddings.{variant}")]) < 1e-5);
            let vis = m.vision_model.forward(pv, Mode::Inference).unwrap();
            let d = max_abs(&vis, &exp[&format!("pair0.vision_last_hidden_state.{variant}")]);
            assert!(d < 1e-4, "{ckpt} {variant}: vision {d}");
            let prefix = m.image_prefix(pv, Mode::Inference).unwrap();
            let d = max_abs(&prefix, &exp[&format!("pair0.language_projection.{variant}")]);
            assert!(d < 1e-4, "{ckpt} {variant}: language projection {d}");
        }
    }
}

#[test]
fn swapping_the_adapter_in_place_matches_fresh_loads() {
    let ckpt = "tiny-a";
    let exp = expected(ckpt);
    let pv = &exp["pair0.pixel_values"];
    let bos = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
    let adapter = dir().join(format!("{ckpt}-adapter"));
    let mut model = load(ckpt, true, true);
    // adapter (merged) → base → adapter (unmerged) → adapter (merged) → base
    for (target, merge, variant) in [
        (None, true, "base"),
        (Some(&adapter), false, "adapter"),
        (Some(&adapter), true, "adapter"),
        (None, false, "base"),
    ] {
        model.replace_adapter(target.map(|p| p.as_path()), merge).unwrap();
        let logits = model.model.forward(pv, &bos, Mode::Inference).unwrap();
        let d = max_abs(&logits, &exp[&format!("pair0.logits.{variant}")]);
        assert!(d <= 1e-4, "after swapping to {variant} (merged {merge}): logits max|Δ| = {d}");
        assert_eq!(model.adapter.is_some(), target.is_some());
        assert_eq!(model.adapted_modules.is_empty(), target.is_none());
    }
}

/// Every fixture pair's pixel values, flattened, in order.
fn fixture_pixels(exp: &HashMap<String, Tensor>) -> Vec<Vec<f32>> {
    (0..pairs()).map(|i| exp[&format!("pair{i}.pixel_values")].flatten_all().unwrap().to_vec1().unwrap()).collect()
}

/// The reference's one-by-one greedy ids of every pair, for `ckpt` with or without its adapter.
fn reference_ids(man: &Value, ckpt: &str, variant: &str) -> Vec<Vec<u32>> {
    man["checkpoints"][ckpt]["greedy"][variant]["one_by_one"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ids(&r["token_ids"]))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn greedy_ids_and_captions_match_batched_and_one_by_one() {
    for ckpt in CHECKPOINTS {
        let exp = expected(ckpt);
        let man = manifest();
        for (variant, adapter) in [("base", false), ("adapter", true)] {
            let model = load(ckpt, adapter, true);
            let reference = man["checkpoints"][ckpt]["greedy"][variant]["one_by_one"].as_array().unwrap();
            let pvs = fixture_pixels(&exp);
            let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
            let batch = model.caption_pixels(&refs, 77).unwrap();
            let mut stopped = 0;
            for (i, r) in reference.iter().enumerate() {
                let want = ids(&r["token_ids"]);
                assert_eq!(batch[i].token_ids, want, "{ckpt} {variant} pair {i} (batched)");
                let one = model.caption_pixels(&refs[i..=i], 77).unwrap().remove(0);
                assert_eq!(one.token_ids, want, "{ckpt} {variant} pair {i} (one by one)");
                assert_eq!(one.caption, r["caption"].as_str().unwrap(), "{ckpt} {variant} pair {i} caption");
                stopped += r["stopped_at_eos"].as_bool().unwrap() as usize;
            }
            assert!(stopped > 0 && stopped < reference.len(), "the fixture exercises both stop conditions");
            // The raw batched rows agree too (bos first, then ids, eos, then pad).
            let rows = exp[&format!("batch.greedy_rows.{variant}")].to_dtype(DType::I64).unwrap();
            for (i, g) in batch.iter().enumerate() {
                let row: Vec<i64> = rows.i(i).unwrap().to_vec1().unwrap();
                assert_eq!(row[0], 2);
                let gen: Vec<i64> = g.token_ids.iter().map(|&t| t as i64).collect();
                assert_eq!(&row[1..=gen.len()], gen.as_slice(), "{ckpt} {variant} batch row {i}");
            }
        }
    }
}

/// Continuous batching: pairs admitted while others decode (one or two at a time, at most three
/// running, so rows of different lengths share the cache) get exactly the one-by-one greedy ids.
#[test]
fn continuous_batching_gives_the_one_by_one_ids() {
    use blip2idc::model::engine::DecodeBatch;
    for ckpt in CHECKPOINTS {
        let exp = expected(ckpt);
        let man = manifest();
        for (variant, adapter) in [("base", false), ("adapter", true)] {
            let model = load(ckpt, adapter, true);
            let reference = reference_ids(&man, ckpt, variant);
            let pvs = fixture_pixels(&exp);
            let mut batch = DecodeBatch::new(&model.model);
            let mut done: HashMap<u64, Vec<u32>> = HashMap::new();
            let (mut next, mut steps, mut joined_mid_run) = (0usize, 0, false);
            while done.len() < pvs.len() {
                // Admit one or two pairs whenever there is room, while others are running.
                let room = 3usize.saturating_sub(batch.len()).min(1 + steps % 2).min(pvs.len() - next);
                if room > 0 {
                    joined_mid_run |= !batch.is_empty();
                    let refs: Vec<&[f32]> = pvs[next..next + room].iter().map(|v| v.as_slice()).collect();
                    let keys: Vec<u64> = (next..next + room).map(|k| k as u64).collect();
                    let pv = model.pixel_batch(&refs).unwrap();
                    for f in batch.admit(&model.model, &pv, &keys, 77, &model.eos_token_ids).unwrap() {
                        done.insert(f.key, f.token_ids);
                    }
                    next += room;
                }
                for f in batch.step(&model.model, &model.eos_token_ids).unwrap() {
                    done.insert(f.key, f.token_ids);
                }
                steps += 1;
                assert!(steps < 10_000, "decoding does not end");
            }
            assert!(joined_mid_run, "the schedule admits pairs into a running batch");
            for (i, want) in reference.iter().enumerate() {
                assert_eq!(&done[&(i as u64)], want, "{ckpt} {variant} pair {i}");
            }
        }
    }
}

/// Per-pair token limits: rows with different limits share one batch and each stops at its own, with
/// the reference's ids cut there (the engine benchmark's `--lengths` relies on this).
#[test]
fn per_pair_token_limits_cut_each_row_at_its_own() {
    use blip2idc::model::engine::DecodeBatch;
    let (exp, man) = (expected("tiny-a"), manifest());
    let model = load("tiny-a", true, true);
    let reference = reference_ids(&man, "tiny-a", "adapter");
    let pvs = fixture_pixels(&exp);
    let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
    let limits: Vec<usize> = [0, 1, 3, 12, 77].iter().cycle().take(pvs.len()).copied().collect();
    let keys: Vec<u64> = (0..pvs.len() as u64).collect();
    let mut batch = DecodeBatch::new(&model.model);
    let pv = model.pixel_batch(&refs).unwrap();
    let mut done: HashMap<u64, Vec<u32>> = HashMap::new();
    for f in batch.admit_each(&model.model, &pv, &keys, &limits, &model.eos_token_ids).unwrap() {
        done.insert(f.key, f.token_ids);
    }
    while !batch.is_empty() {
        for f in batch.step(&model.model, &model.eos_token_ids).unwrap() {
            done.insert(f.key, f.token_ids);
        }
    }
    for (i, want) in reference.iter().enumerate() {
        let cut = &want[..want.len().min(limits[i])];
        assert_eq!(done[&(i as u64)], cut, "pair {i}, limit {}", limits[i]);
    }
    let over = model.model.max_new_tokens_limit() + 1;
    let err = batch.admit_each(&model.model, &pv, &keys, &vec![over; keys.len()], &model.eos_token_ids).unwrap_err();
    assert!(err.to_string().contains("more than this model can generate"), "{err}");
    assert!(batch.admit_each(&model.model, &pv, &keys, &[1], &model.eos_token_ids).is_err(), "one limit per pair");
}

/// The captioner thread with continuous batching: batches submitted together share the decoder's
/// rows and each comes back whole, with the one-by-one ids; a swap waits for the rows in flight, so
/// each batch is labelled with the weights that captioned all of it.
#[test]
fn the_captioner_thread_batches_continuously_and_swaps_between_requests() {
    use blip2idc::caption::blip2idc::Blip2IdcCaptioner;
    use blip2idc::caption::{CaptionWorker, Captioner};
    let ckpt = "tiny-a";
    let exp = expected(ckpt);
    let man = manifest();
    let reference = |variant: &str| reference_ids(&man, ckpt, variant);
    let pvs = fixture_pixels(&exp);
    let factory: blip2idc::caption::CaptionerFactory = Box::new(|| {
        let c = Blip2IdcCaptioner::from_model(load(ckpt, true, true), "with-adapter".into(), 77)?
            .with_continuous_batching(3);
        Ok(Box::new(c) as Box<dyn Captioner>)
    });
    let worker = CaptionWorker::spawn(factory).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Three requests queued at once: their pairs join as rows finish (at most three running).
        let halves = [pvs[..2].to_vec(), pvs[2..].to_vec(), pvs[..1].to_vec()];
        let mut replies = Vec::new();
        for h in halves.clone() {
            replies.push(worker.submit(h).await.unwrap());
        }
        // A swap to the base weights, queued behind them; then one more request.
        let swap = worker.swap_adapter(None, "base".into());
        let (swapped, outputs) = tokio::join!(swap, async {
            let mut outs = Vec::new();
            for r in replies {
                outs.push(r.await.unwrap());
            }
            outs
        });
        assert_eq!(swapped.unwrap(), "base");
        let (with_adapter, base) = (reference("adapter"), reference("base"));
        // Requests started before the swap finish on the adapter; one not started yet runs after
        // it, on the base: either way a request's captions all come from the version it names, and
        // once one request ran on the base, the later ones do too (on a loaded machine the swap can
        // land before even the first request started).
        let versions: Vec<&str> = outputs.iter().map(|o| o.model_version.as_str()).collect();
        let first_base = versions.iter().position(|&v| v == "base").unwrap_or(versions.len());
        assert!(versions[first_base..].iter().all(|&v| v == "base"), "versions out of order: {versions:?}");
        let ranges = [0..2, 2..pvs.len(), 0..1];
        for (out, range) in outputs.iter().zip(ranges) {
            let want = match out.model_version.as_str() {
                "with-adapter" => &with_adapter[range],
                "base" => &base[range],
                other => panic!("unexpected version {other}"),
            };
            let got: Vec<Vec<u32>> = out.captions.iter().map(|c| c.as_ref().unwrap().token_ids.clone()).collect();
            assert_eq!(got, want, "{}", out.model_version);
        }
        let after = worker.caption(pvs.clone()).await.unwrap();
        assert_eq!(after.model_version, "base");
        let got: Vec<Vec<u32>> = after.captions.iter().map(|c| c.as_ref().unwrap().token_ids.clone()).collect();
        assert_eq!(got, base);
    });
}

#[test]
fn caption_cli_prints_the_json_contract() {
    let man = manifest();
    let p = &man["pairs"][0];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
        .args(["caption", "--model"])
        .arg(dir().join("tiny-a"))
        .arg("--adapter")
        .arg(dir().join("tiny-a-adapter"))
        .arg("--json")
        .arg(dir().join(p["original"].as_str().unwrap()))
        .arg(dir().join(p["modified"].as_str().unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    let r = &man["checkpoints"]["tiny-a"]["greedy"]["adapter"]["one_by_one"][0];
    assert_eq!(ids(&v["token_ids"]), ids(&r["token_ids"]));
    assert_eq!(v["caption"], r["caption"]);
}

#[test]
fn half_precision_weights_load_and_caption_close_to_f32() {
    let exp = expected("tiny-a");
    let pv = &exp["pair0.pixel_values"];
    let bos = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
    let f32_logits = load("tiny-a", true, true).model.forward(pv, &bos, Mode::Inference).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let m = Blip2Idc::load(&LoadOptions {
            checkpoint: dir().join("tiny-a").to_string_lossy().into_owned(),
            adapter: Some(dir().join("tiny-a-adapter")),
            dtype,
            device: Device::Cpu,
            merge_adapter: true,
        })
        .unwrap();
        assert_eq!(m.model.dtype(), dtype);
        let logits = m.model.forward(pv, &bos, Mode::Inference).unwrap().to_dtype(DType::F32).unwrap();
        let d = max_abs(&logits, &f32_logits);
        let scale = f32_logits.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 0.05 * scale, "{dtype:?}: logits differ by {d} (scale {scale})");
        let g = m.caption_pixels(&[&pv.flatten_all().unwrap().to_vec1::<f32>().unwrap()], 10).unwrap();
        assert!(!g[0].token_ids.is_empty());
    }
}

#[test]
fn an_unknown_hub_id_fails_with_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
        .args(["caption", "--model", "no-such-org/no-such-model"])
        .arg(dir().join("images/p0_original_rgb.png"))
        .arg(dir().join("images/p0_modified_rgb.png"))
        .env("HF_HOME", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-org/no-such-model") && err.contains("HF cache"), "{err}");
}

/// A generation length beyond the model's positions is refused where it enters, naming the limit,
/// instead of failing inside the embedding lookup (the synthetic base: 64 positions, 8 query tokens).
#[test]
fn max_new_tokens_beyond_the_positions_is_a_clear_error() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic/base");
    let caption = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
            .args(["caption", "--model"])
            .arg(&base)
            .args(extra)
            .arg(dir().join("images/p0_original_rgb.png"))
            .arg(dir().join("images/p0_modified_rgb.png"))
            .output()
            .unwrap()
    };
    let out = caption(&["--max-new-tokens", "77"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-new-tokens = 77") && err.contains("from 1 to 56"), "{err}");
    assert!(!err.contains("narrow"), "{err}");
    // Without the option the CLI takes the model's limit, and the limit itself is fine.
    for extra in [&[][..], &["--max-new-tokens", "56"][..]] {
        let out = caption(extra);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // serve: the captioner refuses to start.
    let mut cfg = blip2idc::config::Config::load(None).unwrap().model;
    cfg.checkpoint = base.to_string_lossy().into_owned();
    cfg.max_new_tokens = 77;
    let err = blip2idc::caption::blip2idc::Blip2IdcCaptioner::load(&cfg).err().expect("refused").to_string();
    assert!(err.contains("model.max_new_tokens = 77") && err.contains("from 1 to 56"), "{err}");
    cfg.max_new_tokens = 56;
    assert!(blip2idc::caption::blip2idc::Blip2IdcCaptioner::load(&cfg).is_ok());

    // The model itself returns an error, never a panic or a raw tensor error.
    let m = Blip2Idc::load(&LoadOptions {
        checkpoint: cfg.checkpoint.clone(),
        adapter: None,
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: true,
    })
    .unwrap();
    assert_eq!(m.model.max_new_tokens_limit(), 56);
    let pv = vec![0f32; 3 * m.processor.height as usize * m.processor.width as usize];
    let err = m.caption_pixels(&[&pv], 57).unwrap_err().to_string();
    assert!(err.contains("at most 56"), "{err}");
}
