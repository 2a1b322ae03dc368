//! Pipeline throughput: Kafka → S3 → decode + preprocess (224×224, as BLIP-2) → batch → a cheap
//! captioner → PostgreSQL → commit, on the local stack (`deploy/local/up.sh` must be running).
//!
//! `cargo bench --bench pipeline [-- --events N --pairs P --size S --batch B]`
//! `cargo bench --bench pipeline -- --photos 12 [--events N --pairs P] [--decode-only N]`   (or `--photos 3`)
//! `cargo bench --bench pipeline -- --square 8000 [--events 48]`   (the 8000² flood: peak RSS vs the budget)
//! Any workload: `--mode fast` for `preprocess.mode = "fast"` (default exact); `--unedited F` makes
//! that share of the pairs unedited copies (the original re-encoded at JPEG q80), which the change
//! analysis keeps from the model; `--analysis off` turns the analysis off (the reference for its
//! cost); `--model-ms M` makes the captioner take M ms per pair (a stand-in for GPU time).
//! The change-analysis figures: `cargo bench --bench pipeline -- --size 224 --unedited 0.7
//! [--analysis off] [--model-ms 20]` and `-- --square 1024 --events 240 --unedited 0.7`.
//!
//! Prints pairs/s end to end and, as the reference measured in the same run on the same machine, the
//! rate at which the same objects can merely be fetched from S3 with the same concurrency (the
//! pipeline's I/O ceiling), with the ratio between the two and against the 1000 pairs/s goal.
//! Workloads: synthetic `--size`² JPEG pairs (default 64²), or with `--photos MP` photo-sized pairs made
//! from real photographs (`blip2idc_dev::photos`: scikit-image's sample photos, fetched once with
//! pip): a MP-megapixel 4:3 original and a 0.75-scale edited copy, JPEG quality 90 — the shape of a
//! republished photo. Also prints pairs/s per core, the one-thread decode + preprocess time of a
//! pair, the mean time per stage, and the process's peak RSS while the pipeline ran.
//! Without `--bench` (as `cargo test --benches` runs it) it does nothing.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

mod common;
use common::{load_env, num};

use std::sync::Arc;
use std::time::{Duration, Instant};

use blip2idc::caption::{Captioner, CaptionerFactory};
use blip2idc::config::Config;
use blip2idc::health::Health;
use blip2idc::model::preprocess::{rgb_view, ImageProcessorConfig};
use blip2idc_dev as devtools;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Captions in no time, or — with `--model-ms M` — holds its thread for `M` ms per pair, standing in
/// for a GPU's captioning time so that the pairs the change analysis keeps from the model show as
/// throughput.
struct CheapCaptioner(ImageProcessorConfig, Duration);

impl Captioner for CheapCaptioner {
    fn model_version(&self) -> &str {
        "bench-cheap-captioner"
    }
    fn processor(&self) -> &ImageProcessorConfig {
        &self.0
    }
    fn caption_batch(&mut self, pv: &[&[f32]]) -> anyhow::Result<Vec<blip2idc::caption::Caption>> {
        std::thread::sleep(self.1 * pv.len() as u32);
        Ok(pv.iter().map(|p| format!("a change starting with {:.3}", p[0]).into()).collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    // As `blip2idc serve` runs: freed memory kept for reuse (fresh pages cost a fault and a clear each).
    blip2idc::setup_process();
    let square = num("--square", 0);
    let photo_mp = num("--photos", 0);
    let (events, pairs, size, batch) = if square > 0 {
        (num("--events", 48), num("--pairs", 4), 0, num("--batch", 32))
    } else if photo_mp > 0 {
        (num("--events", 120), num("--pairs", 8), 0, num("--batch", 32))
    } else {
        (num("--events", 6000), num("--pairs", 200), num("--size", 64), num("--batch", 32))
    };
    load_env();
    blip2idc::telemetry::init(blip2idc::config::LogFormat::Pretty, "warn");
    let prom = blip2idc::metrics::install();
    let mut cfg = Config::load(None)?;
    let id = format!("bench-{}", std::process::id());
    cfg.kafka.input_topic = format!("{id}-in");
    cfg.kafka.dlq_topic = format!("{id}-dlq");
    cfg.kafka.group_id = format!("{id}-group");
    cfg.s3.allowed_buckets = vec![id.clone()];
    cfg.pipeline.max_batch_size = batch;
    cfg.pipeline.max_in_flight = 4096;
    cfg.pipeline.decode_concurrency = num("--decode", cfg.pipeline.decode_concurrency);
    cfg.s3.max_concurrency = num("--fetch-concurrency", cfg.s3.max_concurrency);
    cfg.admin.listen = "127.0.0.1:0".parse()?;
    cfg.model.reload_poll_interval = Duration::ZERO; // no promotion checks during the measurement
                                                     // `--analysis off`: caption every pair, as before the change analysis (the reference for its cost).
    cfg.analysis.enabled = common::arg("--analysis").is_none_or(|a| a != "off");
    cfg.analysis.skip_unchanged = cfg.analysis.enabled;
    let unedited_share: f64 = common::arg("--unedited").map_or(Ok(0.0), |v| v.parse())?;
    let model_time = Duration::from_secs_f64(num("--model-ms", 0) as f64 / 1e3);
    if let Some(mode) = common::arg("--mode") {
        cfg.preprocess.mode = mode.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    }
    devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.input_topic, 3).await?;
    devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.dlq_topic, 1).await?;
    let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
    devtools::ensure_bucket(&s3, &id).await?;
    let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
    store.migrate().await?;

    // The workload: JPEG bytes of each distinct pair.
    let real = photo_mp > 0 || square > 0;
    let photos = if real { devtools::photos::sample_photos(&devtools::photos::cache_dir())? } else { vec![] };
    let (width, height, scale) = if square > 0 {
        (square as u32, square as u32, 1.0)
    } else {
        let w = ((photo_mp as f64 * 1e6 * 4.0 / 3.0).sqrt()).round() as u32;
        (w, (w as f64 * 0.75).round() as u32, 0.75)
    };
    let workload = if real {
        format!("{width}x{height} + {scale}-scale edited copy, real photos, JPEG q90, {} mode", cfg.preprocess.mode)
    } else {
        format!("{size}x{size} synthetic JPEG")
    };
    let workload = if unedited_share > 0.0 {
        format!("{workload}, {:.0} % unedited copies (the original re-encoded, JPEG q80)", 100.0 * unedited_share)
    } else {
        workload
    };
    // Pair `i` is an unedited copy when it falls in the first `unedited_share` of each ten.
    let unedited = |i: usize| ((i % 10) as f64) < 10.0 * unedited_share;
    let make = |i: usize| -> (Vec<u8>, Vec<u8>) {
        let (a, b, q) = if real {
            let (a, b) = devtools::photos::photo_pair(&photos, i, width, height, scale);
            (a, b, 90)
        } else {
            let (a, b, _) = devtools::synthetic_pair(i as u64, size as u32);
            (a, b, 85)
        };
        if unedited(i) {
            let original = devtools::jpeg(&a, q);
            let decoded = image::load_from_memory(&original).expect("own JPEG").to_rgb8();
            (original, devtools::jpeg(&decoded, 80))
        } else {
            (devtools::jpeg(&a, q), devtools::jpeg(&b, q))
        }
    };
    eprintln!("setup: {pairs} distinct pairs ({workload}), {events} events");
    let mut keys = Vec::new();
    let mut first_pair = None;
    for i in 0..pairs {
        let (ja, jb) = make(i);
        let (ka, kb) = (format!("{i}/a.jpg"), format!("{i}/b.jpg"));
        devtools::put(&s3, &id, &ka, ja.clone()).await?;
        devtools::put(&s3, &id, &kb, jb.clone()).await?;
        keys.push((ka, kb));
        first_pair.get_or_insert((ja, jb));
    }
    let producer = devtools::producer(&cfg.kafka.brokers)?;
    let sends = (0..events).map(|i| {
        let (ka, kb) = &keys[i % pairs];
        let payload = serde_json::json!({
            "event_id": format!("{id}-{i}"), "original": format!("s3://{id}/{ka}"),
            "republished": format!("s3://{id}/{kb}"), "source_url": "https://bench.example/x"
        })
        .to_string();
        let (producer, topic) = (producer.clone(), cfg.kafka.input_topic.clone());
        async move { devtools::publish(&producer, &topic, &format!("k{i}"), payload.as_bytes()).await }
    });
    futures::stream::iter(sends)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;

    // CPU cost of decode + preprocess alone, one thread.
    {
        let (ja, jb) = first_pair.clone().expect("at least one pair");
        let proc = ImageProcessorConfig::for_image_size(224);
        let reps = if real { 5 } else { 500 };
        let one_thread = blip2idc::config::PreprocessConfig { split_large_pairs: false, ..cfg.preprocess.clone() };
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(blip2idc::decode::decode_pair(&ja, &jb, &cfg.decode, &one_thread, &proc)?);
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        println!("decode + preprocess: {:.3} ms per pair (one thread) = {:.1} pairs/s per core", per * 1e3, 1.0 / per);
        // Its parts: JPEG decoding of both images (at the planned scale), each half of the model input
        // (the original resized onto the modified image's size, then squeezed horizontally; the
        // modified image squeezed horizontally), the final vertical pass with rescale and normalisation.
        let (mut dec, mut top, mut bottom, mut finish) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..reps {
            let t = Instant::now();
            let plan = blip2idc::decode::PairPlan::new(&ja, &jb, &cfg.decode, cfg.preprocess.mode, (224, 224))?;
            let a = blip2idc::decode::decode_planned(&ja, &plan.original, &cfg.decode, "original")?;
            let b = blip2idc::decode::decode_planned(&jb, &plan.modified, &cfg.decode, "republished")?;
            dec += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let squeeze = blip2idc_resample::StackSqueeze::new(plan.modified.decoded, (224, 224));
            let ht = squeeze.top(rgb_view(&a));
            top += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let hb = squeeze.bottom(rgb_view(&b));
            bottom += t.elapsed().as_secs_f64();
            let t = Instant::now();
            std::hint::black_box(proc.normalize(&squeeze.finish(&ht, &hb)));
            finish += t.elapsed().as_secs_f64();
        }
        let ms = |x: f64| 1e3 * x / reps as f64;
        println!(
            "  of which: decode {:.1} ms, top half {:.1} ms, bottom half {:.1} ms, final pass + normalise {:.1} ms",
            ms(dec),
            ms(top),
            ms(bottom),
            ms(finish)
        );
        // `--decode-only N`: N more rounds of decode + preprocess alone, then stop (for a profiler:
        // `perf record -- <bench executable> --bench --photos 12 --decode-only 50`).
        let profile_reps = num("--decode-only", 0);
        if profile_reps > 0 {
            let t = Instant::now();
            for _ in 0..profile_reps {
                std::hint::black_box(blip2idc::decode::decode_pair(&ja, &jb, &cfg.decode, &one_thread, &proc)?);
            }
            println!("--decode-only: {:.1} ms per pair", 1e3 * t.elapsed().as_secs_f64() / profile_reps as f64);
            return Ok(());
        }
    }
    // Reference: the same objects, only fetched, with the pipeline's concurrency.
    let fetcher = blip2idc::fetch::Fetcher::new(s3.clone(), &cfg.s3);
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let fetches = (0..events).map(|i| {
        let (ka, kb) = &keys[i % pairs];
        let a = blip2idc::event::S3Uri { bucket: id.clone(), key: ka.clone() };
        let b = blip2idc::event::S3Uri { bucket: id.clone(), key: kb.clone() };
        let (fetcher, cancel) = (fetcher.clone(), cancel.clone());
        async move { fetcher.fetch_pair(&a, &b, &cancel).await.map(|_| ()) }
    });
    let n_ok = futures::stream::iter(fetches)
        .buffer_unordered(cfg.s3.max_concurrency)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    anyhow::ensure!(n_ok == events, "reference fetch failed");
    let fetch_rate = events as f64 / started.elapsed().as_secs_f64();

    // The pipeline.
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let factory: CaptionerFactory = Box::new(move || {
        Ok(Box::new(CheapCaptioner(ImageProcessorConfig::for_image_size(224), model_time)) as Box<dyn Captioner>)
    });
    let (run_cfg, h, s) = (cfg.clone(), health.clone(), shutdown.clone());
    // The peak RSS of the pipeline phase alone (the workload's setup is forgotten).
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let task = tokio::spawn(async move { blip2idc::pipeline::run(&run_cfg, factory, h, s).await });
    while !health.group_joined.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    // Progress comes from the in-process counter of committed caption rows (a `count(*)` every few
    // milliseconds would make PostgreSQL compete with the pipeline for the two cores).
    loop {
        let n = metric(&prom.render(), blip2idc::metrics::CAPTIONED).unwrap_or(0.0) as usize;
        if n >= events {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {n} of {events} stored after 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak = common::peak_rss();
    shutdown.cancel();
    task.await??;
    let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM captions WHERE event_id LIKE $1 || '-%'")
        .bind(&id)
        .fetch_one(store.pool())
        .await?;
    anyhow::ensure!(n as usize == events, "{n} distinct events stored, expected {events}");
    let rate = events as f64 / elapsed;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "pipeline: {events} pairs ({workload}, preprocessed to 224x224, batch {batch}) in {elapsed:.2} s = {rate:.1} \
         pairs/s = {:.2} pairs/s per core ({cores} cores)",
        rate / cores as f64
    );
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "peak RSS while the pipeline ran: {:.2} GiB{}; byte budget (pipeline.max_in_flight_bytes) {:.2} GiB",
        gib(peak),
        if peak_reset { "" } else { " (whole process: the kernel refused to reset the peak)" },
        gib(cfg.pipeline.max_in_flight_bytes)
    );
    println!(
        "reference (S3 fetch only, same objects, concurrency {}): {fetch_rate:.0} pairs/s",
        cfg.s3.max_concurrency
    );
    println!("ratio pipeline / fetch-only: {:.2}", rate / fetch_rate);
    println!("ratio pipeline / goal (1000 pairs/s): {:.2}", rate / 1000.0);
    // Where the time went: mean seconds per observation of each step.
    let text = prom.render();
    let stat = |name: &str, suffix: &str| metric(&text, &format!("{name}_{suffix}")).unwrap_or(f64::NAN);
    for m in ["fetch", "decode", "inference", "store", "end_to_end"] {
        let name = format!("blip2idc_{m}_seconds");
        println!(
            "  {m:>10}: mean {:.2} ms over {} observations",
            1e3 * stat(&name, "sum") / stat(&name, "count"),
            stat(&name, "count")
        );
    }
    println!("  batch size: mean {:.1}", stat("blip2idc_batch_size", "sum") / stat("blip2idc_batch_size", "count"));
    let analysed = metric_sum(&text, blip2idc::metrics::PAIRS_ANALYSED) + 0.0; // never "-0"
    let skipped = metric(&text, blip2idc::metrics::MODEL_SKIPPED).unwrap_or(0.0);
    println!(
        "  change analysis {}: {analysed} pairs analysed (mean {:.2} ms), {skipped} kept from the model ({:.1} %; \
         {:.1} s of model time saved at --model-ms {})",
        if cfg.analysis.enabled { "on" } else { "off" },
        1e3 * stat("blip2idc_analysis_seconds", "sum") / stat("blip2idc_analysis_seconds", "count"),
        100.0 * skipped / events as f64,
        skipped * model_time.as_secs_f64(),
        model_time.as_millis()
    );
    Ok(())
}

/// The sum of every sample of `name` (all label sets) in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The value of the first sample of `name` (unlabelled, or its first label set) in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()).and_then(|v| v.parse().ok())
}
