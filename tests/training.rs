//! The LoRA training path against PyTorch + PEFT (fixtures from
//! `tests/fixtures/blip2/make_training_fixtures.py`): loss, every LoRA gradient, weights after three
//! AdamW steps, the pad-masking option; gradients reach every LoRA tensor and no frozen weight; PEFT
//! loads the adapters we save.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip2idc::model::lora::Adapter;
use blip2idc::model::ops::{Mode, TrainFlags};
use blip2idc::model::{Blip2Idc, LoadOptions};
use blip2idc::train::lora::LoraParams;
use blip2idc::train::loss::{caption_loss, encode_labels, PadMasking};
use blip2idc::train::optim::{AdamW, AdamWConfig};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// Differentiable kernels, no dropout: the training forward compared with PyTorch's.
const TRAIN_NO_DROPOUT: Mode = Mode::Train(TrainFlags { lora_dropout: false, base_dropout: false });

const CHECKPOINTS: [&str; 2] = ["tiny-a", "tiny-b"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("expected").join(format!("{name}.safetensors")), &Device::Cpu).unwrap()
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected/train.json")).unwrap()).unwrap()
}

/// The base unmerged, with the fixture adapter's weights as trainable variables.
fn trainable(ckpt: &str) -> (Blip2Idc, LoraParams) {
    let mut m = Blip2Idc::load(&LoadOptions {
        checkpoint: dir().join(ckpt).to_string_lossy().into_owned(),
        adapter: None,
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: false,
    })
    .unwrap();
    let shapes = m.model.linear_shapes();
    let adapter = Adapter::load(&dir().join(format!("{ckpt}-adapter")), &Device::Cpu, &shapes).unwrap();
    let params = LoraParams::from_adapter(&mut m.model, &adapter).unwrap();
    (m, params)
}

fn batch(ckpt: &str) -> Tensor {
    let exp = load(ckpt);
    let pvs: Vec<&Tensor> = (0..4).map(|i| &exp[&format!("pair{i}.pixel_values")]).collect();
    Tensor::cat(&pvs, 0).unwrap()
}

fn labels(ckpt: &str, m: &Blip2Idc) -> Vec<Vec<u32>> {
    let meta = meta();
    let captions: Vec<&str> = meta["captions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let ours = encode_labels(&m.tokenizer, &captions, 30, 2).unwrap();
    let fixture = load(&format!("train-{ckpt}"))["labels"].to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    let fixture: Vec<Vec<u32>> = fixture.into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
    assert_eq!(ours, fixture, "{ckpt}: labels differ from the reference tokenization");
    ours
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let norm = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    diff / norm.max(1e-12)
}

fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn loss_and_every_lora_gradient_match_pytorch_peft() {
    for ckpt in CHECKPOINTS {
        let (m, params) = trainable(ckpt);
        let exp = load(&format!("train-{ckpt}"));
        let pv = batch(ckpt);
        let labels = labels(ckpt, &m);
        for (masking, prefix) in [(PadMasking::Count, ""), (PadMasking::Ignore, "masked.")] {
            let loss = caption_loss(&m.model, &pv, &labels, TRAIN_NO_DROPOUT, masking, 2).unwrap();
            let want = scalar(&exp[&format!("{prefix}loss0")]);
            let got = loss.to_scalar::<f32>().unwrap();
            assert!((got - want).abs() <= 1e-5, "{ckpt} {masking:?}: loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            for v in &params.modules {
                for (which, var) in [("lora_A", &v.a), ("lora_B", &v.b)] {
                    let g =
                        grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{ckpt}: no gradient for {}", v.module));
                    let want = &exp[&format!("{prefix}grad.{}.{which}", v.module)];
                    let e = rel_err(g, want);
                    assert!(e <= 1e-4, "{ckpt} {masking:?} {}.{which}: relative error {e}", v.module);
                }
            }
        }
    }
}

#[test]
fn three_adamw_steps_match_pytorch() {
    for ckpt in CHECKPOINTS {
        let (m, params) = trainable(ckpt);
        let exp = load(&format!("train-{ckpt}"));
        let pv = batch(ckpt);
        let labels = labels(ckpt, &m);
        let mut opt =
            AdamW::new(params.vars(), AdamWConfig { lr: 1e-3, weight_decay: 0.01, ..Default::default() }).unwrap();
        let want_losses: Vec<f64> =
            exp["losses"].to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (step, want) in want_losses.iter().enumerate() {
            let loss = caption_loss(&m.model, &pv, &labels, TRAIN_NO_DROPOUT, PadMasking::Count, 2).unwrap();
            let got = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((got - want).abs() <= 1e-4, "{ckpt} step {step}: loss {got} vs {want}");
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        for v in &params.modules {
            for (which, var) in [("lora_A", &v.a), ("lora_B", &v.b)] {
                let want = &exp[&format!("step3.{}.{which}", v.module)];
                let d = (var.as_tensor() - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let d = d.to_scalar::<f32>().unwrap();
                assert!(d <= 1e-4, "{ckpt} {}.{which}: max |Δ| {d} after 3 steps", v.module);
            }
        }
    }
}

#[test]
fn gradients_reach_every_lora_tensor_and_no_frozen_weight() {
    let (mut m, params) = trainable("tiny-a");
    let pv = batch("tiny-a");
    let labels = labels("tiny-a", &m);
    let loss = caption_loss(&m.model, &pv, &labels, TRAIN_NO_DROPOUT, PadMasking::Count, 2).unwrap();
    let grads = loss.backward().unwrap();
    for v in &params.modules {
        for (which, var) in [("A", &v.a), ("B", &v.b)] {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {}.{which}", v.module));
            let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0, "zero gradient for {}.{which}", v.module);
        }
    }
    for (name, t) in m.model.named_tensors_mut() {
        assert!(grads.get(t).is_none(), "frozen {name} got a gradient buffer");
    }
}

#[test]
fn fresh_lora_is_initialised_as_peft_and_changes_nothing_until_trained() {
    let mut m = Blip2Idc::load(&LoadOptions {
        checkpoint: dir().join("tiny-a").to_string_lossy().into_owned(),
        adapter: None,
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: false,
    })
    .unwrap();
    let pv = batch("tiny-a");
    let bos = Tensor::new(&[[2u32]; 4], &Device::Cpu).unwrap();
    let before = m.model.forward(&pv, &bos, Mode::Inference).unwrap();
    let cfg = blip2idc::model::lora::AdapterConfig::blip2idc_default("tiny-a");
    let params = LoraParams::init(&mut m.model, cfg, 3).unwrap();
    let after = m.model.forward(&pv, &bos, Mode::Inference).unwrap();
    let d = (before - after).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "B = 0: a fresh LoRA is a no-op");
    let adapted: Vec<&str> = params.modules.iter().map(|v| v.module.as_str()).collect();
    let mut want: Vec<String> =
        serde_json::from_str::<Value>(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
            ["checkpoints"]["tiny-a"]["adapter"]["adapted_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect();
    want.sort();
    let mut got: Vec<String> = adapted.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "PEFT's module selection");
    for v in &params.modules {
        let a = v.a.as_tensor();
        let bound = 1.0 / (a.dims()[1] as f32).sqrt();
        let max = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max <= bound && max > bound * 0.5, "{}: A not kaiming-uniform(a=√5)", v.module);
        assert_eq!(v.b.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
    assert_eq!(
        params.num_params(),
        10_240,
        "PEFT counts 10,240 trainable parameters on tiny-a (benches/train_reference.py)"
    );
}

#[test]
fn saved_adapters_round_trip_and_peft_loads_them() {
    // Train three steps, save in PEFT format, load back: same logits, merged or not.
    let (m, params) = trainable("tiny-a");
    let pv = batch("tiny-a");
    let labels = labels("tiny-a", &m);
    let mut opt = AdamW::new(params.vars(), AdamWConfig { lr: 1e-3, ..Default::default() }).unwrap();
    for _ in 0..3 {
        let loss = caption_loss(&m.model, &pv, &labels, TRAIN_NO_DROPOUT, PadMasking::Count, 2).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    params.to_adapter().unwrap().save(tmp.path()).unwrap();
    let bos = Tensor::new(&[[2u32]; 4], &Device::Cpu).unwrap();
    let trained = m.model.forward(&pv, &bos, Mode::Inference).unwrap();
    for merge in [true, false] {
        let reloaded = Blip2Idc::load(&LoadOptions {
            checkpoint: dir().join("tiny-a").to_string_lossy().into_owned(),
            adapter: Some(tmp.path().to_owned()),
            dtype: DType::F32,
            device: Device::Cpu,
            merge_adapter: merge,
        })
        .unwrap();
        let got = reloaded.model.forward(&pv, &bos, Mode::Inference).unwrap();
        let d = (&trained - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "merge {merge}: reloaded adapter differs by {d}");
    }
    // The committed adapter written by this code path loads in PEFT 0.6.2 with the same logits.
    let ours = dir().join("tiny-a-rust-adapter");
    let peft = load("peft-loads-rust-adapter");
    let model = Blip2Idc::load(&LoadOptions {
        checkpoint: dir().join("tiny-a").to_string_lossy().into_owned(),
        adapter: Some(ours),
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: true,
    })
    .unwrap();
    let exp = load("tiny-a");
    let one = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
    for i in 0..2 {
        let got = model.model.forward(&exp[&format!("pair{i}.pixel_values")], &one, Mode::Inference).unwrap();
        let d = (got - &peft[&format!("pair{i}.logits")]).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4, "pair {i}: PEFT's logits with our adapter differ by {d}");
    }
}

/// Writes `tests/fixtures/blip2/tiny-a-rust-adapter` (run with `--ignored` to regenerate; then rerun
/// `peft_loads_rust_adapter.py`).
#[test]
#[ignore]
fn write_rust_adapter_fixture() {
    let (m, params) = trainable("tiny-a");
    let pv = batch("tiny-a");
    let labels = labels("tiny-a", &m);
    let mut opt = AdamW::new(params.vars(), AdamWConfig { lr: 1e-2, ..Default::default() }).unwrap();
    for _ in 0..3 {
        let loss = caption_loss(&m.model, &pv, &labels, TRAIN_NO_DROPOUT, PadMasking::Count, 2).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    params.to_adapter().unwrap().save(&dir().join("tiny-a-rust-adapter")).unwrap();
}
