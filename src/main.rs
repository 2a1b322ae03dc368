//! The `blip2idc` command line.

#[global_allocator]
static ALLOC: blip2idc::GlobalAllocator = blip2idc::GlobalAllocator {};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use blip2idc::config::{Config, LogFormat};

/// Image difference captioning: tells what changed between an original image and a republished copy.
///
/// Configuration comes from config/default.toml (built in), then --config FILE, then environment
/// variables BLIP2IDC_<SECTION>__<KEY> (e.g. BLIP2IDC_KAFKA__BROKERS). Secrets come from the
/// environment only: DATABASE_URL, and the AWS default chain (AWS_ACCESS_KEY_ID, ...).
#[derive(Parser)]
#[command(name = "blip2idc", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// TOML file overriding the built-in defaults (see config/default.toml for every key).
    #[arg(long, short = 'c', env = "BLIP2IDC_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BreakerArgs {
    #[command(subcommand)]
    action: BreakerAction,
    #[command(flatten)]
    config: ConfigArg,
    /// The consumer group (default: kafka.group_id of the configuration).
    #[arg(long, global = true)]
    group: Option<String>,
}

#[derive(Subcommand)]
enum BreakerAction {
    /// Print whether the group's breaker is tripped, when, by whom and why (exit code 3 when tripped).
    Status,
    /// Reset the group's breaker: held consumers start consuming within seconds.
    Reset,
}

#[derive(clap::Args)]
struct ModelsArgs {
    #[command(subcommand)]
    action: ModelsAction,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Every registered version of model.checkpoint, newest first: holdout scores, which one is
    /// promoted, how many running consumers have it loaded, load errors; then the last promotions.
    List {
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
        /// Promotions shown.
        #[arg(long, default_value_t = 10)]
        history: i64,
    },
    /// Promote VERSION: consumers switch to it within seconds (NOTIFY), without a restart. Recorded
    /// in the registry with who and why. Promoting a version again clears its load error.
    Promote {
        version: String,
        /// Why (recorded; required).
        #[arg(long)]
        reason: String,
        /// Who [default: $BLIP2IDC_OPERATOR, else $USER@host].
        #[arg(long)]
        by: Option<String>,
    },
    /// Promote the version promoted before the current one (twice in a row goes back and forth).
    Rollback {
        /// Why (recorded; required).
        #[arg(long)]
        reason: String,
        /// Who [default: $BLIP2IDC_OPERATOR, else $USER@host].
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(clap::Args)]
struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum DlqAction {
    /// Re-publish dead letters to the input topic after a fix (payload and key unchanged; storing a
    /// pair twice is one row, so replaying again is safe). Reads the dead-letter topic up to its end
    /// at the start; prints what was replayed and skipped, by kind.
    Replay {
        /// A kind to replay (repeatable), e.g. object_missing, fetch_failed, caption_failed.
        #[arg(long = "kind", value_name = "KIND", required_unless_present = "all_kinds")]
        kinds: Vec<String>,
        /// Replay every kind (malformed events will be dead-lettered again).
        #[arg(long, conflicts_with = "kinds")]
        all_kinds: bool,
        /// Only dead letters from this time on (RFC 3339, e.g. 2026-12-02T10:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Count what would be replayed; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the streaming service: consume image-pair events from Kafka, fetch the images from S3,
    /// caption them with BLIP2IDC and store the captions in PostgreSQL. Stops gracefully on
    /// SIGTERM/SIGINT (drains, commits, leaves the group). Exit code 3 when the dead-letter breaker trips.
    Serve(ConfigArg),
    /// Apply the database migrations and exit.
    Migrate(ConfigArg),
    /// Show or reset the consumer group's dead-letter breaker. A tripped breaker (recorded in
    /// PostgreSQL) keeps every replica of the group unready and consuming nothing until it is reset.
    Breaker(BreakerArgs),
    /// The model registry: list versions, promote one, roll back (consumers follow within seconds).
    Models(ModelsArgs),
    /// The dead-letter topic: replay dead letters of chosen kinds to the input topic.
    Dlq(DlqArgs),
    /// Validate the configuration and print it (secrets redacted).
    Config(ConfigArg),
    /// Caption one pair of local image files: what changed from ORIGINAL to MODIFIED.
    Caption(CaptionArgs),
    /// Score predicted captions against references with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D,
    /// exactly as pycocoevalcap 1.2 computes them.
    Eval(blip2idc::eval::cli::EvalArgs),
    /// Fine-tune the LoRA adapter on newly labeled pairs (the `labels` table), evaluate it against the
    /// promoted adapter on the frozen holdout, upload and register it, and promote it when it is
    /// better. Runs once (for cron / a Kubernetes CronJob) or, with --every, on retrain.interval.
    Retrain(RetrainArgs),
    /// The analysts' web app on review.listen: search captions, compare a pair's images, accept or
    /// correct captions (each decision a row of `labels`, which `retrain` trains on), the model
    /// registry. Users and roles come from [[review.users]] in --config. Subcommands make password
    /// hashes and API tokens for that list.
    Review(ReviewArgs),
}

#[derive(clap::Args)]
struct ReviewArgs {
    #[command(subcommand)]
    action: Option<ReviewAction>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum ReviewAction {
    /// Serve the app (the default). Stops on SIGTERM/SIGINT.
    Serve,
    /// Read a password from stdin (one line; e.g. `read -rs p; echo "$p" | blip2idc review
    /// hash-password`) and print its Argon2id hash for a [[review.users]] password_hash.
    HashPassword,
    /// Print a new random API token (give it to the client, for `Authorization: Bearer`) and its
    /// SHA-256 (for the user's token_sha256).
    NewToken,
}

#[derive(clap::Args)]
struct RetrainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Keep running: one run every retrain.interval (until SIGTERM/SIGINT).
    #[arg(long)]
    every: bool,
    /// Print the run's outcome as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CaptionArgs {
    /// Checkpoint directory written by save_pretrained (config.json, *.safetensors, tokenizer.json,
    /// optional preprocessor_config.json), or a hub id such as Salesforce/blip2-opt-2.7b (resolved
    /// through the HF cache in HF_HOME, downloaded when the network allows).
    #[arg(long, value_name = "DIR|HUB_ID")]
    model: String,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors or .bin).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Most tokens to generate [default: 77 (the authors' setting), or the model's limit when its
    /// positions allow fewer]. A value above the limit is an error that names it.
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Weight dtype.
    #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
    dtype: blip2idc::config::Dtype,
    /// Device: cpu, cuda or cuda:N (cuda needs a binary built with --features cuda).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda|cuda:N")]
    device: blip2idc::config::DeviceSpec,
    /// Keep the adapter as a separate LoRA branch instead of merging it into the weights.
    #[arg(long, conflicts_with = "batch")]
    unmerged: bool,
    /// Print one JSON object {"caption", "token_ids", "changed", "regions", "actions",
    /// "model_skipped"}: token_ids are the generated tokens after the bos prompt, up to but excluding
    /// the first eos; the rest is the change analysis (regions as [x0, y0, x1, y1] boxes in the
    /// original's pixels, actions as C2PA action names). A pair found unchanged gets
    /// analysis.unchanged_caption without the model (model_skipped: true; token_ids empty) unless
    /// BLIP2IDC_ANALYSIS__SKIP_UNCHANGED=false.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: ConfigArg,
    /// Caption every pair of a JSONL file instead (lines {"id", "original", "modified"}, paths or
    /// s3:// URIs) into --output: one line per pair with the keys of --json plus "id" and
    /// "model_version", or {"id", "error", "kind"}; failed lines do not stop the run. Run again with
    /// the same output to resume: captioned ids are skipped, failed ones retried. Exit code 5 when
    /// some lines failed.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["original", "modified", "json"])]
    batch: Option<PathBuf>,
    /// Where --batch writes [default: FILE.captions.jsonl beside the input].
    #[arg(long, short = 'o', value_name = "OUT.jsonl", requires = "batch")]
    output: Option<PathBuf>,
    /// Pairs per captioning batch in --batch mode [default: pipeline.max_batch_size].
    #[arg(long, value_name = "N", requires = "batch", value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: Option<u32>,
    /// The original image (JPEG, PNG or WebP): a file, or an s3://bucket/key object, read as the
    /// service reads it (s3.* settings of --config and the environment: endpoint, allow-list, size
    /// cap, retries; AWS credentials from the default chain).
    #[arg(value_name = "ORIGINAL", required_unless_present = "batch")]
    original: Option<String>,
    /// The modified (republished) image: a file or an s3://bucket/key object.
    #[arg(value_name = "MODIFIED", required_unless_present = "batch")]
    modified: Option<String>,
}

fn main() -> ExitCode {
    blip2idc::setup_process();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(c) => serve(Config::load(c.config.as_deref())?).await,
        Command::Migrate(c) => {
            let cfg = Config::load(c.config.as_deref())?;
            blip2idc::telemetry::init(cfg.log.format, &cfg.log.filter);
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            store.migrate().await?;
            eprintln!("migrations applied to {}", cfg.database.url.redacted());
            Ok(ExitCode::SUCCESS)
        }
        Command::Breaker(b) => {
            let cfg = Config::load(b.config.config.as_deref())?;
            let group = b.group.unwrap_or_else(|| cfg.kafka.group_id.clone());
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            let show = |t: &blip2idc::store::breaker::Trip| {
                format!("tripped at {} by {}: {}", t.tripped_at.to_rfc3339(), t.tripped_by, t.reason)
            };
            match b.action {
                BreakerAction::Status => match store.trip_of(&group).await? {
                    Some(t) => {
                        println!("group {group}: {}", show(&t));
                        Ok(ExitCode::from(3))
                    }
                    None => {
                        println!("group {group}: not tripped");
                        Ok(ExitCode::SUCCESS)
                    }
                },
                BreakerAction::Reset => {
                    match store.reset_trip(&group).await? {
                        Some(t) => println!("group {group}: reset (it was {})", show(&t)),
                        None => println!("group {group}: was not tripped"),
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Models(m) => models(m).await,
        Command::Dlq(d) => dlq(d).await,
        Command::Caption(a) => caption(a).await,
        Command::Retrain(a) => retrain(a).await,
        Command::Review(a) => review(a).await,
        Command::Eval(args) => {
            blip2idc::eval::cli::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(c) => {
            let cfg = Config::load(c.config.as_deref())?;
            println!("{}", cfg.to_redacted_toml()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn models(m: ModelsArgs) -> anyhow::Result<ExitCode> {
    use blip2idc::operator;
    let cfg = Config::load(m.config.config.as_deref())?;
    let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
    let base = &cfg.model.checkpoint;
    let out = match m.action {
        ModelsAction::List { json, history } => {
            let fresh = operator::fresh_window(cfg.model.reload_poll_interval);
            if json {
                operator::list_json(&store, base, fresh, history).await?
            } else {
                operator::list_text(&store, base, fresh, history).await?
            }
        }
        ModelsAction::Promote { version, reason, by } => {
            operator::promote(&store, base, &version, &operator::operator(by.as_deref()), &reason).await?
        }
        ModelsAction::Rollback { reason, by } => {
            operator::rollback(&store, base, &operator::operator(by.as_deref()), &reason).await?
        }
    };
    println!("{}", out.trim_end());
    Ok(ExitCode::SUCCESS)
}

async fn dlq(d: DlqArgs) -> anyhow::Result<ExitCode> {
    use blip2idc::dlq::replay::{replay, ReplayOptions};
    let cfg = Config::load(d.config.config.as_deref())?;
    let DlqAction::Replay { kinds, all_kinds: _, since, limit, dry_run, json } = d.action;
    let opts = ReplayOptions { kinds, since, dry_run, limit };
    blip2idc::dlq::replay::check_kinds(&opts.kinds)?;
    let bar = indicatif::ProgressBar::new(0).with_style(indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {pos}/{len} dead letters read [{elapsed}]",
    )?);
    bar.set_message(format!("replaying {} -> {}", cfg.kafka.dlq_topic, cfg.kafka.input_topic));
    let summary = tokio::task::spawn_blocking({
        let (kafka, dlq_brokers, bar) = (cfg.kafka.clone(), cfg.dlq.brokers.clone(), bar.clone());
        move || {
            replay(&kafka, dlq_brokers.as_deref(), &opts, &|read, total| {
                bar.set_length(total as u64);
                bar.set_position(read as u64);
            })
        }
    })
    .await??;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let verb = if summary.dry_run { "would replay" } else { "replayed" };
        println!(
            "read {} dead letters; {verb} {} to {}",
            summary.read,
            summary.total_replayed(),
            cfg.kafka.input_topic
        );
        for (kind, n) in &summary.replayed {
            println!("  {verb} {n:>7}  {kind}");
        }
        for (kind, n) in &summary.skipped {
            println!("  skipped  {n:>7}  {kind}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn retrain(a: RetrainArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(a.config.config.as_deref())?;
    blip2idc::telemetry::init(cfg.log.format, &cfg.log.filter);
    if a.every {
        let stop = CancellationToken::new();
        spawn_signal_handler(stop.clone());
        blip2idc::train::job::run_scheduled(&cfg, stop).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = blip2idc::train::job::run_once(&cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("run {}: {} — {}", outcome.run_id, outcome.status, outcome.decision);
        for s in [&outcome.baseline, &outcome.candidate].into_iter().flatten() {
            println!(
                "  {}: CIDEr-D {:.4}  BLEU-4 {:.4}  ROUGE-L {:.4}  METEOR {}",
                s.version,
                s.cider,
                s.bleu4,
                s.rouge_l,
                s.meteor.map_or("n/a".into(), |m| format!("{m:.4}"))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn review(a: ReviewArgs) -> anyhow::Result<ExitCode> {
    use blip2idc::review::auth;
    match a.action.unwrap_or(ReviewAction::Serve) {
        ReviewAction::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(password.chars().count() >= 12, "the password must be at least 12 characters");
            println!("{}", auth::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        ReviewAction::NewToken => {
            let token = auth::random_token();
            println!("token:        {token}\ntoken_sha256: {}", auth::sha256_hex(&token));
            Ok(ExitCode::SUCCESS)
        }
        ReviewAction::Serve => {
            let cfg = Config::load(a.config.config.as_deref())?;
            blip2idc::telemetry::init(cfg.log.format, &cfg.log.filter);
            let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
            if cfg.database.migrate_on_start {
                store.migrate().await?;
            }
            let stop = CancellationToken::new();
            spawn_signal_handler(stop.clone());
            let (addr, task) = blip2idc::review::spawn(cfg, stop).await?;
            tracing::info!(%addr, "review app: http://{addr}/");
            eprintln!("review app listening on http://{addr}/ (Ctrl-C stops it)");
            task.await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn caption(a: CaptionArgs) -> anyhow::Result<ExitCode> {
    use blip2idc::model::loader::{dtype, open_device};
    if let Some(input) = a.batch.clone() {
        return caption_file(a, input).await;
    }
    let (original_spec, modified_spec) =
        (a.original.clone().unwrap_or_default(), a.modified.clone().unwrap_or_default());
    blip2idc::telemetry::init(LogFormat::Pretty, "warn");
    let opts = blip2idc::model::LoadOptions {
        checkpoint: a.model.clone(),
        adapter: a.adapter.clone(),
        dtype: dtype(a.dtype),
        device: open_device(a.device)?,
        merge_adapter: !a.unmerged,
    };
    let cfg = Config::load(a.config.config.as_deref())?;
    blip2idc::model::blas::configure(&cfg.model.blas)?;
    let s3 = if [&original_spec, &modified_spec].iter().any(|s| s.starts_with("s3://")) {
        Some(blip2idc::fetch::ObjectReader::connect(&cfg.s3).await?)
    } else {
        None
    };
    let read = |spec| blip2idc::caption::offline::read(spec, s3.as_ref());
    let (original, modified) = tokio::try_join!(read(&original_spec), read(&modified_spec))?;
    let model = blip2idc::model::Blip2Idc::load(&opts)?;
    if model.files.random_weights && !a.json {
        eprintln!("note: {} has RANDOM weights; this caption means nothing", a.model);
    }
    let max_new_tokens = match a.max_new_tokens {
        Some(n) => {
            model.check_max_new_tokens(n, "--max-new-tokens")?;
            n
        }
        None => blip2idc::model::DEFAULT_MAX_NEW_TOKENS.min(model.model.max_new_tokens_limit()),
    };
    // Decoded and preprocessed as the service does (`preprocess.mode` included).
    let analyse = cfg.analysis.enabled;
    let pair = blip2idc::decode::decode_pair_analysed(
        &original,
        &modified,
        &cfg.decode,
        &cfg.preprocess,
        &model.processor,
        analyse,
    )
    .map_err(|r| anyhow::anyhow!("{original_spec} / {modified_spec}: {r}"))?;
    let analysis = pair.analysis.as_ref();
    // A pair found unchanged gets the fixed caption without the model, as in the service.
    let (caption, token_ids) = if cfg.analysis.skips(analysis) {
        (None, Vec::new())
    } else {
        let g = model.caption_pixels(&[&pair.pixel_values], max_new_tokens)?.remove(0);
        (Some(g.caption), g.token_ids)
    };
    let text = caption.clone().unwrap_or_else(|| cfg.analysis.unchanged_caption.clone());
    if a.json {
        let mut line = serde_json::json!({"caption": text, "token_ids": token_ids});
        line.as_object_mut().expect("an object").extend(blip2idc::analysis::report(analysis, caption.as_deref()));
        println!("{line}");
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `caption --batch`: every pair of `input` through the service's captioner (see
/// `blip2idc::caption::offline`).
async fn caption_file(a: CaptionArgs, input: PathBuf) -> anyhow::Result<ExitCode> {
    use blip2idc::caption::blip2idc::Blip2IdcCaptioner;
    use blip2idc::model::loader::{check_device, dtype, open_device};
    blip2idc::telemetry::init(LogFormat::Pretty, "warn");
    let cfg = Config::load(a.config.config.as_deref())?;
    anyhow::ensure!(input.is_file(), "--batch {}: no such file", input.display());
    let output = a.output.clone().unwrap_or_else(|| {
        let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        input.with_file_name(format!("{stem}.captions.jsonl"))
    });
    check_device(a.device)?;
    let blas = blip2idc::model::blas::configure(&cfg.model.blas)?;
    tracing::info!(%blas, "CPU matrix products");
    let opts = blip2idc::model::LoadOptions {
        checkpoint: a.model.clone(),
        adapter: a.adapter.clone(),
        dtype: dtype(a.dtype),
        device: candle_core::Device::Cpu, // opened on the captioner thread below
        merge_adapter: true,
    };
    let (device, max_new_tokens, name, max_running) =
        (a.device, a.max_new_tokens, a.model.clone(), cfg.model.max_running);
    let factory: blip2idc::caption::CaptionerFactory = Box::new(move || {
        let model =
            blip2idc::model::Blip2Idc::load(&blip2idc::model::LoadOptions { device: open_device(device)?, ..opts })?;
        if model.files.random_weights {
            eprintln!("note: {name} has RANDOM weights; its captions mean nothing");
        }
        let max_new = max_new_tokens
            .unwrap_or_else(|| blip2idc::model::DEFAULT_MAX_NEW_TOKENS.min(model.model.max_new_tokens_limit()));
        let version = model.default_version()?;
        let captioner = Blip2IdcCaptioner::from_model(model, version, max_new)?.with_continuous_batching(max_running);
        Ok(Box::new(captioner) as Box<dyn blip2idc::caption::Captioner>)
    });
    let worker =
        Arc::new(tokio::task::spawn_blocking(move || blip2idc::caption::CaptionWorker::spawn(factory)).await??);
    let run = blip2idc::caption::offline::Options {
        input,
        output: output.clone(),
        batch_size: a.batch_size.map_or(cfg.pipeline.max_batch_size, |n| n as usize),
        concurrency: cfg.pipeline.decode_concurrency.max(1) * 2,
        in_flight: 1 + cfg
            .model
            .max_running
            .div_ceil(a.batch_size.map_or(cfg.pipeline.max_batch_size, |n| n as usize))
            .max(1),
        decode: cfg.decode.clone(),
        preprocess: cfg.preprocess.clone(),
        analysis: cfg.analysis.clone(),
        s3: cfg.s3.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let summary = blip2idc::caption::offline::run(&run, worker).await?;
    let unchanged = match summary.unchanged {
        0 => String::new(),
        n => format!(" ({n} found unchanged, without the model)"),
    };
    eprintln!(
        "{} captioned{unchanged}, {} failed, {} already in {} (skipped)",
        summary.captioned,
        summary.failed,
        summary.skipped,
        output.display()
    );
    Ok(if summary.failed > 0 { ExitCode::from(5) } else { ExitCode::SUCCESS })
}

async fn serve(cfg: Config) -> anyhow::Result<ExitCode> {
    blip2idc::telemetry::init(cfg.log.format, &cfg.log.filter);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting blip2idc serve");
    let prometheus = blip2idc::metrics::install();
    let health = Arc::new(blip2idc::health::Health::default());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let admin_stop = CancellationToken::new();
    let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
    let (addr, admin) =
        blip2idc::admin::spawn(cfg.admin.listen, health.clone(), store.clone(), prometheus, admin_stop.clone()).await?;
    tracing::info!(%addr, "admin endpoints: /healthz /readyz /metrics");

    let factory = blip2idc::caption::blip2idc::factory(&cfg.model)?;
    // One pool for the pipeline and the admin server.
    let summary = blip2idc::pipeline::run_with(&cfg, store, factory, health, shutdown).await?;
    admin_stop.cancel();
    let _ = admin.await;
    Ok(ExitCode::from(summary.exit_code()))
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n > 0 {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
            tracing::info!("signal received: shutting down gracefully (send again to exit at once)");
            shutdown.cancel();
        }
    });
}
