//! Change analysis on the evaluation set (issue 14): `blip2idc-dev edit-set`'s cases made in memory
//! (scikit-image's sample photos, fetched once with pip, and the synthetic world), each pair decoded as
//! the service decodes it and analysed.
//!
//! `cargo bench --bench analysis -- --bench [--synthetic N] [--variant N] [--verbose]`
//! (`--variant` other than 0: the same photographs with every edit, crop and synthetic pair drawn
//! anew, a held-out check of thresholds chosen on variant 0)
//!
//! Prints, per variant kind, the share of pairs found unchanged (skipped); the edited pairs of at
//! least 0.5 % area wrongly skipped; the mean IoU between the union of the predicted regions and the
//! true edit box, by edit size; precision and recall of the geometric C2PA actions; the residual
//! distributions the threshold is chosen from; the analysis time per pair against the decoding time
//! of the same pairs (the reference measured in the same run). `--verbose` prints every detected edit's
//! IoU, true box and predicted regions.
//! Without `--bench` (as `cargo test --benches` runs it) it does nothing.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

mod common;
use common::num;

use std::collections::BTreeMap;
use std::time::Instant;

use blip2idc::analysis::{analyze, CHANGED_THRESHOLD, LOST_CHANGED, RECOLOURED};
use blip2idc::config::DecodeConfig;
use blip2idc::model::preprocess::rgb_view;
use blip2idc_dev as devtools;

fn iou(a: [u32; 4], b: [u32; 4]) -> f64 {
    let ix = (a[2].min(b[2]) as f64 - a[0].max(b[0]) as f64).max(0.0);
    let iy = (a[3].min(b[3]) as f64 - a[1].max(b[1]) as f64).max(0.0);
    let inter = ix * iy;
    let area = |r: [u32; 4]| ((r[2] - r[0]) * (r[3] - r[1])) as f64;
    inter / (area(a) + area(b) - inter).max(1.0)
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    blip2idc::setup_process();
    let photos = devtools::photos::sample_photos(&devtools::photos::cache_dir())?;
    let variant = num("--variant", 0) as u64;
    let cases = devtools::edits::evaluation_set(&photos, num("--synthetic", 100), variant);
    let verbose = std::env::args().any(|a| a == "--verbose");
    let limits = DecodeConfig { max_width: 16384, max_height: 16384, max_alloc_bytes: 1 << 30 };
    // kind -> (pairs, skipped, IoUs of the detected edits)
    let mut by_kind: BTreeMap<String, (usize, usize, Vec<f64>)> = BTreeMap::new();
    let (mut false_skips, mut big_edits) = (0usize, 0usize);
    // The same over the edits that visibly changed ≥ 0.5 % of the image (`Case::visible_area`).
    let (mut visible_skips, mut visible_edits) = (0usize, 0usize);
    let mut ious: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // action -> (true positives, predicted, actual)
    let mut actions: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let (mut unedited_res, mut edited_res) = (Vec::new(), Vec::new());
    // The largest group's texture loss of the unedited copies.
    let mut unedited_lost = Vec::new();
    let mut unedited_recoloured = Vec::new();
    let mut unedited_skipped = 0usize;
    let (mut t_decode, mut t_analysis) = (0.0, 0.0);
    // Analysis time and pairs, unedited [0] and edited [1].
    let (mut t_by_truth, mut n_by_truth) = ([0.0f64; 2], [0usize; 2]);
    let mut worst = Vec::new();
    for c in &cases {
        let t = Instant::now();
        let rep = blip2idc::decode::decode(&c.republished_file, &limits, "republished")?.into_rgb8();
        let orig = &c.original;
        t_decode += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let a = analyze(rgb_view(orig), rgb_view(&rep))
            .expect("the evaluation set's images are large enough")
            // Every copy of the set is re-encoded (the original's file is not kept).
            .with_files(&[], &c.republished_file);
        let spent = t.elapsed().as_secs_f64();
        t_analysis += spent;
        t_by_truth[c.edited as usize] += spent;
        n_by_truth[c.edited as usize] += 1;
        let e = by_kind.entry(c.kind.clone()).or_default();
        e.0 += 1;
        e.1 += !a.changed as usize;
        if c.edited {
            edited_res.push((a.max_residual, c.edit_area, c.id.clone()));
            if c.edit_area >= 0.005 {
                big_edits += 1;
                if !a.changed {
                    false_skips += 1;
                    worst.push(format!(
                        "{} (area {:.3}, visibly changed {:.3}, residual {:.2}, texture lost {:.2}, recoloured {:.3} %)",
                        c.id,
                        c.edit_area,
                        c.visible_area,
                        a.max_residual,
                        a.lost_texture,
                        100.0 * a.recoloured
                    ));
                }
            }
            if c.visible_area >= 0.005 {
                visible_edits += 1;
                visible_skips += !a.changed as usize;
            }
            if a.changed {
                let truth = c.edit_box.expect("edited cases have a box");
                let union = a.regions.iter().fold(None, |u: Option<[u32; 4]>, r| {
                    Some(u.map_or(*r, |u| [u[0].min(r[0]), u[1].min(r[1]), u[2].max(r[2]), u[3].max(r[3])]))
                });
                let bucket = match c.edit_area {
                    a if a < 0.005 => "< 0.5 %",
                    a if a < 0.03 => "0.5-3 %",
                    a if a < 0.1 => "3-10 %",
                    _ => "≥ 10 %",
                };
                let v = union.map_or(0.0, |u| iou(u, truth));
                if verbose {
                    println!(
                        "  {}: IoU {v:.2}, truth {truth:?}, regions {:?}, recoloured {:.3} %",
                        c.id,
                        a.regions,
                        100.0 * a.recoloured
                    );
                }
                ious.entry(bucket).or_default().push(v);
                by_kind.get_mut(&c.kind).expect("counted above").2.push(v);
            }
        } else {
            unedited_res.push((a.max_residual, c.id.clone()));
            unedited_lost.push((a.lost_texture, c.id.clone()));
            unedited_recoloured.push((100.0 * a.recoloured, c.id.clone()));
            unedited_skipped += !a.changed as usize;
            if a.changed {
                worst.push(format!(
                    "{} unedited, residual {:.2}, texture lost {:.2}, recoloured {:.3} %, score {:.3}",
                    c.id,
                    a.max_residual,
                    a.lost_texture,
                    100.0 * a.recoloured,
                    a.alignment.score
                ));
            }
        }
        for act in blip2idc::analysis::actions::ORDER {
            let e = actions.entry(act).or_default();
            let (pred, truth) = (a.actions.contains(&act), c.actions.contains(&act));
            if verbose && pred != truth {
                println!("  {act} {}: {} ({:?})", if pred { "named wrongly" } else { "not named" }, c.id, a.local);
            }
            e.0 += (pred && truth) as usize;
            e.1 += pred as usize;
            e.2 += truth as usize;
        }
    }
    println!(
        "Change analysis on {} cases of variant {variant} (thresholds: residual {CHANGED_THRESHOLD}, texture lost {LOST_CHANGED}, recoloured {RECOLOURED}):",
        cases.len()
    );
    println!("| kind | pairs | skipped (found unchanged) | mean IoU of the detected |\n|---|---|---|---|");
    for (kind, (n, skipped, v)) in &by_kind {
        let iou = if v.is_empty() { "".into() } else { format!("{:.2}", v.iter().sum::<f64>() / v.len() as f64) };
        println!("| {kind} | {n} | {:.1} % | {iou} |", 100.0 * *skipped as f64 / *n as f64);
    }
    println!(
        "unedited skipped: {unedited_skipped}/{} = {:.1} % (goal ≥ 99 %); edited of ≥ 0.5 % area wrongly skipped: {false_skips}/{big_edits} = {:.2} % (goal ≤ 0.5 %)",
        unedited_res.len(),
        100.0 * unedited_skipped as f64 / unedited_res.len() as f64,
        100.0 * false_skips as f64 / big_edits.max(1) as f64
    );
    println!(
        "edited that visibly changed ≥ 0.5 % of the image (≥ {} levels) wrongly skipped: {visible_skips}/{visible_edits} = {:.2} %",
        devtools::edits::VISIBLE_LEVELS,
        100.0 * visible_skips as f64 / visible_edits.max(1) as f64
    );
    for (bucket, v) in &ious {
        println!("  IoU, edits {bucket}: mean {:.2} over {} detected", v.iter().sum::<f64>() / v.len() as f64, v.len());
    }
    for (act, (tp, pred, truth)) in &actions {
        println!(
            "  {act}: precision {:.2} ({tp}/{pred}), recall {:.2} ({tp}/{truth})",
            *tp as f64 / (*pred).max(1) as f64,
            *tp as f64 / (*truth).max(1) as f64
        );
    }
    unedited_res.sort_by(|a, b| a.0.total_cmp(&b.0));
    edited_res.sort_by(|a, b| a.0.total_cmp(&b.0));
    let q = |v: &[f32], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let un: Vec<f32> = unedited_res.iter().map(|r| r.0).collect();
    let ed: Vec<f32> = edited_res.iter().filter(|r| r.1 >= 0.005).map(|r| r.0).collect();
    println!(
        "  residuals: unedited p50 {:.2}, p99 {:.2}, max {:.2} ({}); edited ≥ 0.5 %: min {:.2} ({}), p1 {:.2}, p5 {:.2}",
        q(&un, 0.5),
        q(&un, 0.99),
        un[un.len() - 1],
        unedited_res.last().map_or("", |r| r.1.as_str()),
        ed[0],
        edited_res.iter().find(|r| r.1 >= 0.005).map_or("", |r| r.2.as_str()),
        q(&ed, 0.01),
        q(&ed, 0.05)
    );
    for (what, mut v) in [
        ("texture lost (largest group, blocks)", unedited_lost),
        ("recoloured (% of the compared pixels)", unedited_recoloured),
    ] {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let x: Vec<f32> = v.iter().map(|r| r.0).collect();
        println!(
            "  {what}: unedited p50 {:.3}, p99 {:.3}, max {:.3} ({})",
            q(&x, 0.5),
            q(&x, 0.99),
            x[x.len() - 1],
            v.last().map_or("", |r| r.1.as_str())
        );
    }
    for w in worst.iter().take(40) {
        println!("  miss: {w}");
    }
    println!(
        "time per pair: analysis {:.2} ms, decoding the republished file {:.2} ms (reference, same run); ratio {:.2}",
        1e3 * t_analysis / cases.len() as f64,
        1e3 * t_decode / cases.len() as f64,
        t_analysis / t_decode
    );
    println!(
        "  analysis per unedited pair {:.2} ms, per edited pair {:.2} ms",
        1e3 * t_by_truth[0] / n_by_truth[0].max(1) as f64,
        1e3 * t_by_truth[1] / n_by_truth[1].max(1) as f64
    );
    Ok(())
}
