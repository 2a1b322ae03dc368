//! `blip2idc-dev`: local-stack helpers for the quickstart and for trying the service by hand.
//! Reads the same configuration as `blip2idc` (defaults < --config < BLIP2IDC_* env).

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use blip2idc::config::Config;
use blip2idc_dev as devtools;

/// Development helpers for the local stack (deploy/local/up.sh): create the topics and the bucket,
/// publish sample image pairs, print stored captions.
#[derive(Parser)]
#[command(name = "blip2idc-dev", version)]
struct Cli {
    /// TOML file overriding the built-in defaults.
    #[arg(long, short = 'c', env = "BLIP2IDC_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the input topic (with PARTITIONS partitions), the dead-letter topic, the first
    /// allowed bucket and the adapters bucket.
    Setup {
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// Upload N image pairs of the synthetic world (1-3 shapes in a 2x2 grid, one known edit each:
    /// add, remove, recolour or move; the world the demo model was trained on) and publish their
    /// events, with the edit's reference captions in the event's attributes; with --bad, also publish
    /// one event of every bad-input kind.
    Seed {
        #[arg(long, default_value_t = 5)]
        pairs: u64,
        /// Also publish malformed events (they end up on the dead-letter topic).
        #[arg(long)]
        bad: bool,
        /// Prefix of the event ids and object keys.
        #[arg(long, default_value = "demo")]
        prefix: String,
        /// Seed of the pairs (the same seed publishes the same pairs).
        #[arg(long, default_value_t = 2026)]
        seed: u64,
    },
    /// Print the latest stored captions (from the latest_captions view); for seeded pairs, beside
    /// the known edit.
    Captions {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only ids with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Also write predictions.jsonl and references.jsonl of the seeded pairs (their reference
        /// captions, category = edit kind) into DIR, the input of `blip2idc eval`.
        #[arg(long, value_name = "DIR")]
        eval_dir: Option<PathBuf>,
    },
    /// Pretrain the synthetic world's tiny BLIP-2 fully on single-image captions and save it as a
    /// checkpoint directory (the base that `retrain` then adapts with LoRA on pairs).
    SynthPretrain {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 4000)]
        examples: usize,
        #[arg(long, default_value_t = 12)]
        epochs: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Side of the model's input (8-pixel patches); the demo model uses 64.
        #[arg(long, default_value_t = 48)]
        image_size: usize,
    },
    /// Upload N synthetic image pairs and insert a human-style label for each (the retraining
    /// job's input); categories are the edit kinds.
    SynthLabels {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value = "synth")]
        prefix: String,
        #[arg(long, default_value_t = 11)]
        seed: u64,
    },
    /// Run the local stack's S3 server (s3s-fs: objects as files under ROOT, SigV4 signatures checked
    /// against the given key pair) until interrupted. deploy/local/up.sh starts it.
    S3Server {
        /// Directory holding the buckets (one sub-directory each).
        root: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
        access_key: String,
        #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_key: String,
        /// Answer GET/HEAD of keys under `_state/forbidden/`, `_state/archived/`, `_state/sse-c/`,
        /// `_state/moved/` and `_state/throttled/` with S3's error for such objects (403 AccessDenied,
        /// 403 InvalidObjectState, 400 InvalidRequest, 301 PermanentRedirect, 503 SlowDown).
        #[arg(long)]
        object_states: bool,
    },
    /// Peak memory of `blip2idc serve` under a flood of SIZE² JPEG pairs, with pipeline.max_in_flight_bytes
    /// = BUDGET against a run without a binding budget (needs the local stack and the built binary).
    BenchMemory {
        #[arg(long, default_value_t = 8192)]
        size: u32,
        #[arg(long, default_value_t = 12)]
        pairs: usize,
        /// Bytes (the default is the configured pipeline.max_in_flight_bytes).
        #[arg(long)]
        budget: Option<u64>,
    },
    /// Write the change-analysis evaluation set (issue 14) into OUT: republished copies of
    /// scikit-image's sample photographs (fetched once with pip) and of the synthetic world, unedited
    /// and edited, with each edit's box, kinds and C2PA actions in OUT/manifest.json.
    EditSet {
        #[arg(long)]
        out: std::path::PathBuf,
        /// Pairs of the synthetic world (half unedited, half edited).
        #[arg(long, default_value_t = 100)]
        synthetic: usize,
        /// 0: the set the analysis' thresholds were chosen on; another number draws the edits,
        /// crops and synthetic pairs anew (a held-out set).
        #[arg(long, default_value_t = 0)]
        variant: u64,
    },
    /// Wait until COUNT captions with the prefix are stored (or TIMEOUT passes).
    Wait {
        #[arg(long)]
        count: i64,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    blip2idc::setup_process();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Setup { partitions } => {
            devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.input_topic, partitions).await?;
            devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.dlq_topic, 1).await?;
            let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
            devtools::ensure_bucket(&s3, &cfg.s3.allowed_buckets[0]).await?;
            devtools::ensure_bucket(&s3, &cfg.retrain.adapter_bucket).await?;
            println!(
                "topics {} ({partitions} partitions) and {}; buckets {} (images) and {} (adapters)",
                cfg.kafka.input_topic, cfg.kafka.dlq_topic, cfg.s3.allowed_buckets[0], cfg.retrain.adapter_bucket
            );
        }
        Command::Seed { pairs, bad, prefix, seed } => {
            let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
            let bucket = &cfg.s3.allowed_buckets[0];
            let producer = devtools::producer(&cfg.kafka.brokers)?;
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            for i in 0..pairs {
                let (ka, kb) = (format!("{prefix}/{i}/original.jpg"), format!("{prefix}/{i}/republished.jpg"));
                let p = devtools::put_synthetic_pair(&s3, bucket, (&ka, &kb), &mut rng).await?;
                let event = serde_json::json!({
                    "event_id": format!("{prefix}-{i}"),
                    "original": format!("s3://{bucket}/{ka}"),
                    "republished": format!("s3://{bucket}/{kb}"),
                    "source_url": format!("https://news.example/{prefix}/{i}"),
                    "observed_at": chrono::Utc::now().to_rfc3339(),
                    "attributes": {"synthetic_edit": p.kind, "synthetic_references": p.captions},
                });
                devtools::publish(
                    &producer,
                    &cfg.kafka.input_topic,
                    &format!("{prefix}-{i}"),
                    event.to_string().as_bytes(),
                )
                .await?;
                println!("published {prefix}-{i}: {}", p.captions[0]);
            }
            if bad {
                devtools::put(&s3, bucket, &format!("{prefix}/not-an-image.jpg"), b"hello".to_vec()).await?;
                let ok = format!("s3://{bucket}/{prefix}/0/original.jpg");
                let bad_events = [
                    "{not json".to_owned(),
                    serde_json::json!({"original": ok, "republished": ok}).to_string(),
                    serde_json::json!({"event_id": format!("{prefix}-bad-uri"), "original": "http://x/y", "republished": ok}).to_string(),
                    serde_json::json!({"event_id": format!("{prefix}-bucket"), "original": "s3://elsewhere/k", "republished": ok}).to_string(),
                    serde_json::json!({"event_id": format!("{prefix}-missing"), "original": format!("s3://{bucket}/nope.jpg"), "republished": ok}).to_string(),
                    serde_json::json!({"event_id": format!("{prefix}-notimg"), "original": format!("s3://{bucket}/{prefix}/not-an-image.jpg"), "republished": ok}).to_string(),
                ];
                for (i, e) in bad_events.iter().enumerate() {
                    devtools::publish(&producer, &cfg.kafka.input_topic, &format!("{prefix}-bad-{i}"), e.as_bytes())
                        .await?;
                }
                println!("published {} bad events (they go to {})", bad_events.len(), cfg.kafka.dlq_topic);
            }
        }
        Command::Captions { limit, prefix, eval_dir } => {
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            let rows = store.latest_captions(&prefix, limit).await?;
            let seeded = rows.iter().any(|r| r.3.get("synthetic_references").is_some());
            if seeded {
                println!("{:<20} {:<46} stored caption", "event", "known edit");
            }
            for (id, version, caption, attributes) in &rows {
                match attributes["synthetic_references"].get(0).and_then(|v| v.as_str()) {
                    Some(truth) => println!("{id:<20} {truth:<46} {caption}"),
                    None => println!("{id}\t{version}\t{caption}"),
                }
            }
            if let Some(dir) = eval_dir {
                let n = devtools::write_eval_files(&rows, &dir)?;
                println!("wrote {n} seeded pairs to {}/predictions.jsonl and references.jsonl", dir.display());
            }
        }
        Command::SynthPretrain { out, examples, epochs, lr, batch_size, seed, image_size } => {
            use blip2idc::train::trainer::TrainConfig;
            // The trainer logs each epoch (losses, seconds): the progress of a long run.
            blip2idc::telemetry::init(blip2idc::config::LogFormat::Pretty, "info");
            let tc = TrainConfig {
                epochs,
                batch_size,
                lr,
                seed,
                patience: 3,
                max_length: 20,
                dropout: false,
                base_dropout: false,
                augment: None,
                ..TrainConfig::default()
            };
            let report = blip2idc::train::synthetic::pretrain_base(&out, examples, image_size, &tc)?;
            for e in &report.epochs {
                println!(
                    "epoch {}: train loss {:.4} holdout loss {:?} ({:.0} s)",
                    e.epoch, e.train_loss, e.holdout_loss, e.seconds
                );
            }
            println!("saved the synthetic base to {} (best epoch {})", out.display(), report.best_epoch);
        }
        Command::SynthLabels { pairs, prefix, seed } => {
            let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
            let bucket = &cfg.s3.allowed_buckets[0];
            devtools::ensure_bucket(&s3, bucket).await?;
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            store.migrate().await?;
            devtools::seed_synthetic_labels(&s3, &store, (bucket, &prefix), pairs, seed, "blip2idc-dev synth-labels")
                .await?;
            println!("uploaded {pairs} synthetic pairs to s3://{bucket}/{prefix}/ and inserted {pairs} labels");
        }
        Command::S3Server { root, host, port, access_key, secret_key, object_states } => {
            blip2idc::telemetry::init(blip2idc::config::LogFormat::Pretty, "info");
            devtools::s3_server(&root, (&host, port), &access_key, &secret_key, object_states).await?;
        }
        Command::BenchMemory { size, pairs, budget } => {
            let budget = budget.unwrap_or(cfg.pipeline.max_in_flight_bytes);
            blip2idc_dev::bench_memory::bench_memory(&cfg, size, pairs, budget).await?;
        }
        Command::EditSet { out, synthetic, variant } => {
            let photos = devtools::photos::sample_photos(&devtools::photos::cache_dir())?;
            let cases = devtools::edits::evaluation_set(&photos, synthetic, variant);
            devtools::edits::write_set(&cases, &out)?;
            let edited = cases.iter().filter(|c| c.edited).count();
            println!("{} cases ({} unedited, {edited} edited) in {}", cases.len(), cases.len() - edited, out.display());
        }
        Command::Wait { count, prefix, timeout } => {
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let n = store.caption_count(&prefix).await.unwrap_or(0);
                if n >= count {
                    println!("{n} captions stored");
                    break;
                }
                anyhow::ensure!(std::time::Instant::now() < deadline, "only {n} of {count} captions after {timeout:?}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    Ok(())
}
