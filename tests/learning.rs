//! Proof that the training path learns: the synthetic world's tiny BLIP-2, pretrained fully on
//! single-image captions (`blip2idc-dev synth-pretrain`, committed in tests/fixtures/synthetic/base),
//! is adapted with LoRA on image pairs, as BLIP2IDC adapts BLIP-2, and its held-out CIDEr-D rises.

use std::path::Path;

use blip2idc::eval::{EvalItem, EvalOptions};
use blip2idc::model::lora::AdapterConfig;
use blip2idc::model::preprocess::stack_pair;
use blip2idc::model::{Blip2Idc, LoadOptions};
use blip2idc::train::lora::LoraParams;
use blip2idc::train::synthetic::{pair_dataset, PairSample};
use blip2idc::train::trainer::{train, Example, Input, TrainConfig};
use candle_core::{DType, Device};

fn heldout_cider(model: &Blip2Idc, holdout: &[(Example, PairSample)]) -> (f64, Vec<String>) {
    let mut items = Vec::new();
    let mut shown = Vec::new();
    for (i, chunk) in holdout.chunks(16).enumerate() {
        let pvs: Vec<Vec<f32>> = chunk
            .iter()
            .map(|(e, _)| match &e.input {
                Input::Pair { original, modified } => model.processor.pixel_values(&stack_pair(original, modified)),
                Input::Single(_) => unreachable!(),
            })
            .collect();
        let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
        for (j, (g, (_, p))) in model.caption_pixels(&refs, 20).unwrap().into_iter().zip(chunk).enumerate() {
            if shown.len() < 4 {
                shown.push(format!("{:?} -> {:?} (truth: {:?})", p.kind, g.caption, p.captions[0]));
            }
            items.push(EvalItem {
                id: format!("{}", i * 16 + j),
                candidate: g.caption,
                references: p.captions.clone(),
                category: Some(p.kind.to_owned()),
            });
        }
    }
    (blip2idc::eval::evaluate(&items, &EvalOptions::native()).unwrap().corpus.cider, shown)
}

#[test]
fn lora_on_pairs_raises_heldout_cider_over_the_pretrained_base() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic/base");
    let mut model = Blip2Idc::load(&LoadOptions {
        checkpoint: base.to_string_lossy().into_owned(),
        adapter: None,
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: false,
    })
    .unwrap();
    let train_set = pair_dataset(480, 1, &model.tokenizer, 20, 2).unwrap();
    let holdout = pair_dataset(64, 2, &model.tokenizer, 20, 2).unwrap();
    let (before, samples_before) = heldout_cider(&model, &holdout);

    let mut cfg = AdapterConfig::blip2idc_default("synthetic-base");
    cfg.r = 8;
    cfg.lora_alpha = 16.0;
    let params = LoraParams::init(&mut model.model, cfg, 5).unwrap();
    let tc = TrainConfig {
        epochs: 12,
        batch_size: 16,
        lr: 3e-3,
        patience: 3,
        max_length: 20,
        base_dropout: false,
        augment: None,
        ..TrainConfig::default()
    };
    let train_examples: Vec<Example> = train_set.iter().map(|(e, _)| e.clone()).collect();
    let holdout_examples: Vec<Example> = holdout.iter().map(|(e, _)| e.clone()).collect();
    let report = train(&model.model, params.vars(), &train_examples, &holdout_examples, &model.processor, &tc).unwrap();
    let (after, samples_after) = heldout_cider(&model, &holdout);

    eprintln!("held-out CIDEr-D: base {before:.3} -> LoRA on pairs {after:.3}");
    eprintln!("losses: {:?}", report.epochs.iter().map(|e| (e.train_loss, e.holdout_loss)).collect::<Vec<_>>());
    eprintln!("before: {samples_before:#?}\nafter: {samples_after:#?}");
    let first = report.epochs[0].holdout_loss.unwrap();
    assert!(report.best_holdout_loss.unwrap() < first, "holdout loss must fall");
    assert!(after > before + 0.5, "CIDEr-D must rise clearly: {before:.3} -> {after:.3}");
}

/// The demo model (models/synthetic) ends its captions with `</s>` (id 2, the labels' padding) and
/// names it as eos; under its former eos ("\n", id 4, never generated) every caption ran to the
/// token limit. Stopping at `</s>` keeps every caption's text and cuts the tokens generated.
#[test]
fn the_demo_model_stops_at_the_end_of_its_captions_with_the_same_text() {
    use rand::SeedableRng;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/synthetic");
    let model = Blip2Idc::load(&LoadOptions {
        checkpoint: root.join("base").to_string_lossy().into_owned(),
        adapter: Some(root.join("adapter")),
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: true,
    })
    .unwrap();
    assert_eq!(model.eos_token_ids, vec![2]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let pvs: Vec<Vec<f32>> = (0..24)
        .map(|_| {
            let p = blip2idc::train::synthetic::random_pair(&mut rng);
            let (a, b) = (p.original.render(&mut rng), p.modified.render(&mut rng));
            model.processor.pixel_values(&stack_pair(&a, &b))
        })
        .collect();
    let refs: Vec<&[f32]> = pvs.iter().map(|v| v.as_slice()).collect();
    let pv = model.pixel_batch(&refs).unwrap();
    let limit = model.model.max_new_tokens_limit();
    let stopped = model.model.generate_greedy(&pv, limit, &[2]).unwrap();
    let former = model.model.generate_greedy(&pv, limit, &[4]).unwrap();
    for (now, before) in stopped.iter().zip(&former) {
        assert_eq!(before.len(), limit, "under the former eos every caption ran to the limit");
        assert!(now.len() < limit, "{now:?}");
        assert_eq!(model.decode(now).unwrap(), model.decode(before).unwrap());
        assert!(!model.decode(now).unwrap().is_empty());
    }
}
