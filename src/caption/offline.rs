//! Offline batch captioning (`blip2idc caption --batch FILE.jsonl`): backfills and evaluations.
//!
//! Input lines are `{"id": "...", "original": "...", "modified": "..."}` with local paths or
//! `s3://bucket/key` objects (read as the service reads them: allow-list, size cap, retries). Each
//! pair is decoded and preprocessed as the service does, captioned by the service's captioner thread
//! ([`super::CaptionWorker`], batches of `--batch-size`), and written as one output line with the keys
//! of `caption --json` plus the id and the model version:
//! `{"id", "caption", "token_ids", "model_version", "changed", "regions", "actions", "model_skipped"}`
//! (the change analysis, [`crate::analysis`]; with `analysis.skip_unchanged` a pair found unchanged
//! gets `analysis.unchanged_caption` without the model, and empty `token_ids`). A line that cannot
//! be captioned (bad JSON, a missing field or file, an image that does not decode) gets
//! `{"id", "error", "kind"}` and the rest goes on.
//!
//! The output is appended to and flushed line by line, so an interrupted run loses at most the
//! batches in flight: run again with the same output and the ids already captioned are skipped
//! (failed ids are tried again, their old error lines dropped). `blip2idc eval --predictions OUTPUT`
//! scores the result.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::CaptionWorker;
use crate::analysis::Analysis;
use crate::config::{AnalysisConfig, DecodeConfig, PreprocessConfig, S3Config};
use crate::decode::DecodedPair;
use crate::error::{RejectKind, Rejection};
use crate::fetch::ObjectReader;
use crate::model::preprocess::ImageProcessorConfig;
use crate::s3uri::S3Uri;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pairs captioned by this run (those found unchanged included).
    pub captioned: usize,
    /// Of those, pairs found unchanged and given the fixed caption without the model.
    pub unchanged: usize,
    /// Lines that failed (each has an error line in the output).
    pub failed: usize,
    /// Ids skipped because the output already had their caption.
    pub skipped: usize,
}

/// How to run.
pub struct Options {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Pairs per captioning batch.
    pub batch_size: usize,
    /// Pairs read and decoded at once.
    pub concurrency: usize,
    /// Batches with the captioner at once.
    pub in_flight: usize,
    pub decode: DecodeConfig,
    pub preprocess: PreprocessConfig,
    pub analysis: AnalysisConfig,
    pub s3: S3Config,
    /// Show a progress bar (on stderr, when it is a terminal).
    pub progress: bool,
}

/// One input line to caption.
struct Pair {
    id: String,
    original: String,
    modified: String,
}

/// Captions every pair of `opts.input` not yet in `opts.output` with `worker`.
pub async fn run(opts: &Options, worker: Arc<CaptionWorker>) -> anyhow::Result<Summary> {
    let done = resume(&opts.output)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.output)
        .with_context(|| format!("opening {}", opts.output.display()))?;
    let mut summary = Summary { skipped: done.len(), ..Summary::default() };
    let mut write = |line: Value| -> anyhow::Result<()> {
        writeln!(out, "{line}").and_then(|()| out.flush()).with_context(|| format!("writing {}", opts.output.display()))
    };

    // Parse the input; bad lines are failures of their own.
    let input = std::fs::File::open(&opts.input).with_context(|| format!("opening {}", opts.input.display()))?;
    let mut seen = HashSet::new();
    let mut todo = Vec::new();
    for (n, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", opts.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line) {
            Ok(pair) if !seen.insert(pair.id.clone()) => {
                summary.failed += 1;
                write(failure(json!(pair.id), n + 1, &Rejection::new(RejectKind::InvalidField, "duplicate id")))?;
            }
            Ok(pair) if done.contains(&pair.id) => {}
            Ok(pair) => todo.push(pair),
            Err((id, why)) => {
                summary.failed += 1;
                write(failure(id, n + 1, &why))?;
            }
        }
    }

    let bar = progress_bar(opts.progress, todo.len() as u64);
    let reader = if todo.iter().any(|p| p.original.starts_with("s3://") || p.modified.starts_with("s3://")) {
        Some(Arc::new(ObjectReader::connect(&opts.s3).await?))
    } else {
        None
    };

    // Read and decode concurrently; caption in batches as pairs become ready.
    // One channel for loaded pairs and loading failures alike: batches are cut from it (next_batch
    // is not cancellation-safe, so nothing else is awaited beside it).
    let (tx, mut rx) = mpsc::channel::<(String, Result<DecodedPair, Rejection>)>(opts.batch_size * 2);
    let loader = {
        let (decode, processor, concurrency) = (
            (opts.decode.clone(), opts.preprocess.clone(), opts.analysis.enabled),
            worker.processor().clone(),
            opts.concurrency,
        );
        tokio::spawn(async move {
            let mut loaded = futures::stream::iter(todo)
                .map(|pair| {
                    let (reader, decode, processor) = (reader.clone(), decode.clone(), processor.clone());
                    async move {
                        let pixels = load(&pair, reader.as_deref(), decode, processor).await;
                        (pair.id, pixels)
                    }
                })
                .buffer_unordered(concurrency.max(1));
            while let Some(item) = loaded.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        })
    };

    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let bar_for_report = bar.clone();
    let report = |summary: &mut Summary,
                  write: &mut dyn FnMut(Value) -> anyhow::Result<()>,
                  ids: Vec<(String, Option<Analysis>)>,
                  output: super::BatchOutput|
     -> anyhow::Result<()> {
        for ((id, analysis), caption) in ids.into_iter().zip(output.captions) {
            match caption {
                Ok(c) => {
                    summary.captioned += 1;
                    let mut line = json!({"id": id, "caption": c.text, "token_ids": c.token_ids,
                                          "model_version": output.model_version});
                    line.as_object_mut()
                        .expect("an object")
                        .extend(crate::analysis::report(analysis.as_ref(), Some(&c.text)));
                    write(line)?;
                }
                Err(why) => {
                    summary.failed += 1;
                    write(failure(json!(id), 0, &why))?;
                }
            }
            bar_for_report.inc(1);
        }
        Ok(())
    };
    while let Some(batch) = crate::batch::next_batch(&mut rx, opts.batch_size, Duration::from_millis(20)).await {
        let (mut ids, mut pixels) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
        for (id, loaded) in batch {
            match loaded {
                Ok(p) if opts.analysis.skips(p.analysis.as_ref()) => {
                    summary.captioned += 1;
                    summary.unchanged += 1;
                    let mut line = json!({"id": id, "caption": opts.analysis.unchanged_caption, "token_ids": [],
                                          "model_version": worker.model_version()});
                    line.as_object_mut().expect("an object").extend(crate::analysis::report(p.analysis.as_ref(), None));
                    write(line)?;
                    bar.inc(1);
                }
                Ok(p) => {
                    ids.push((id, p.analysis));
                    pixels.push(p.pixel_values);
                }
                Err(why) => {
                    summary.failed += 1;
                    write(failure(json!(id), 0, &why))?;
                    bar.inc(1);
                }
            }
        }
        if pixels.is_empty() {
            continue;
        }
        // Keep `in_flight` batches with the captioner, so a continuous-batching decoder stays full.
        pending.push_back((ids, worker.submit(pixels).await?));
        while pending.len() >= opts.in_flight.max(1) {
            let (ids, reply) = pending.pop_front().expect("non-empty");
            let output = reply.await.context("the captioner thread stopped")?;
            report(&mut summary, &mut write, ids, output)?;
        }
    }
    while let Some((ids, reply)) = pending.pop_front() {
        let output = reply.await.context("the captioner thread stopped")?;
        report(&mut summary, &mut write, ids, output)?;
    }
    loader.await.context("the loader task failed")?;
    out.sync_all().with_context(|| format!("syncing {}", opts.output.display()))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        captioned = summary.captioned,
        unchanged = summary.unchanged,
        failed = summary.failed,
        skipped = summary.skipped,
        pairs_per_s = summary.captioned as f64 / seconds.max(1e-9),
        "batch captioning done"
    );
    Ok(summary)
}

/// The ids the output already has a caption for. Error lines, and a last line cut short by an
/// interruption, are dropped from the file (rewritten in place) so that those ids are tried again
/// and every id keeps one line.
fn resume(output: &Path) -> anyhow::Result<HashSet<String>> {
    let mut done = HashSet::new();
    let Ok(text) = std::fs::read_to_string(output) else { return Ok(done) };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines() {
        let captioned = serde_json::from_str::<Value>(line).ok().and_then(|v| match (&v["id"], &v["caption"]) {
            (Value::String(id), Value::String(_)) => Some(id.clone()),
            _ => None,
        });
        if captioned.is_some_and(|id| done.insert(id)) {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 || !text.ends_with('\n') && !text.is_empty() {
        let tmp = output.with_extension("resume.tmp");
        std::fs::write(&tmp, &kept).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, output).with_context(|| format!("replacing {}", output.display()))?;
        tracing::info!(
            kept = done.len(),
            dropped,
            "resuming {}: failed and partial lines will be redone",
            output.display()
        );
    }
    Ok(done)
}

/// `{"id", "original", "modified"}` (the id a string or a number); on error, the id if it could be
/// read, and why.
fn parse_line(line: &str) -> Result<Pair, (Value, Rejection)> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| (Value::Null, Rejection::new(RejectKind::MalformedJson, format!("the line is not JSON: {e}"))))?;
    let id = match &v["id"] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err((
                Value::Null,
                Rejection::new(RejectKind::MissingField, "\"id\" (a string or a number) is missing"),
            ))
        }
    };
    let field = |name: &str| match &v[name] {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err((
            json!(id),
            Rejection::new(RejectKind::MissingField, format!("{name:?} (a path or an s3:// URI) is missing")),
        )),
    };
    Ok(Pair { original: field("original")?, modified: field("modified")?, id })
}

/// Reads, decodes and preprocesses one pair as the service does.
async fn load(
    pair: &Pair,
    reader: Option<&ObjectReader>,
    (limits, preprocess, analyse): (DecodeConfig, PreprocessConfig, bool),
    processor: ImageProcessorConfig,
) -> Result<DecodedPair, Rejection> {
    let (a, b) = tokio::try_join!(read(&pair.original, reader), read(&pair.modified, reader))?;
    let decode = move || crate::decode::decode_pair_analysed(&a, &b, &limits, &preprocess, &processor, analyse);
    match tokio::task::spawn_blocking(decode).await {
        Ok(r) => r,
        Err(e) => Err(Rejection::new(RejectKind::InternalError, format!("decoding failed: {e}"))),
    }
}

/// The bytes of `spec`: an `s3://` object read through `reader` (as the service reads it), else a
/// local file. Also `blip2idc caption`'s reader for one pair.
pub async fn read(spec: &str, reader: Option<&ObjectReader>) -> Result<bytes::Bytes, Rejection> {
    match reader.filter(|_| spec.starts_with("s3://")) {
        Some(reader) => {
            let uri = S3Uri::parse(spec)?;
            reader.read(&uri).await.map_err(|e| Rejection::new(RejectKind::FetchFailed, format!("{e:#}")))
        }
        None => tokio::fs::read(spec)
            .await
            .map(Into::into)
            .map_err(|e| Rejection::new(RejectKind::ObjectMissing, format!("reading {spec}: {e}"))),
    }
}

/// An error line: the id (null when unreadable), the input line when known, the reason and its kind.
fn failure(id: Value, line: usize, why: &Rejection) -> Value {
    let mut v = json!({"id": id, "error": why.message, "kind": why.kind.as_str()});
    if line > 0 {
        v["line"] = json!(line);
    }
    v
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} captioning {bar:30} {pos}/{len} pairs  {per_sec}  ETA {eta}  ({elapsed})",
        )
        .expect("a valid template"),
    );
    bar
}
