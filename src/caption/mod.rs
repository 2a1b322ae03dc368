//! The captioner: a trait for models, and the dedicated thread that runs one.
//!
//! A model holds a GPU (or all CPU cores) and is not `Sync`; it lives on its own OS thread and takes
//! batches over a channel. Between batches the thread can swap in another model (a newly promoted
//! adapter) without losing or splitting a batch; every result names the model version that made it.

pub mod blip2idc;
mod continuous;
pub mod offline;
pub mod reload;

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;

use crate::error::{panic_message, RejectKind, Rejection};
use crate::model::preprocess::ImageProcessorConfig;

/// A pair-difference captioning model.
pub trait Captioner: Send + 'static {
    /// The version recorded with every caption this model produces.
    fn model_version(&self) -> &str;
    /// The preprocessing its `pixel_values` must come from.
    fn processor(&self) -> &ImageProcessorConfig;
    /// Captions a batch of preprocessed pairs (CHW `f32` each); one caption per input, in order.
    fn caption_batch(&mut self, pixel_values: &[&[f32]]) -> anyhow::Result<Vec<Caption>>;

    /// The step decoder when this captioner decodes a token at a time for rows that come and go
    /// (continuous batching); `None` (the default) captions whole batches with
    /// [`Captioner::caption_batch`].
    fn decoder(&mut self) -> Option<&mut dyn StepDecoder> {
        None
    }

    /// Whether [`Captioner::swap_adapter`] works; models that cannot swap in place are replaced whole
    /// by [`CaptionWorker::swap`].
    fn swaps_adapters(&self) -> bool {
        false
    }

    /// Switches to another adapter of the same base in place (no second model in memory), naming the
    /// result `version`. Only called when [`Captioner::swaps_adapters`].
    fn swap_adapter(&mut self, _adapter_dir: Option<&std::path::Path>, _version: &str) -> anyhow::Result<()> {
        anyhow::bail!("this captioner cannot swap adapters in place")
    }
}

/// Decoding for continuous batching: pairs are admitted into the running rows and leave as they
/// finish (see `continuous.rs`). Keys are the caller's.
pub trait StepDecoder {
    /// The most rows decoded at once.
    fn capacity(&self) -> usize;
    /// Prefills `pixel_values` as rows `keys`; returns the pairs that finished at once.
    fn admit(&mut self, pixel_values: &[&[f32]], keys: &[u64]) -> anyhow::Result<Vec<(u64, Caption)>>;
    /// One token for every running row; returns the rows that finished.
    fn step(&mut self) -> anyhow::Result<Vec<(u64, Caption)>>;
    /// Drops every running row (after a failure).
    fn clear(&mut self);
}

/// One generated caption.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caption {
    pub text: String,
    /// The generated token ids after the bos prompt, up to but excluding the first eos (empty for
    /// captioners that do not generate tokens).
    pub token_ids: Vec<u32>,
}

impl From<String> for Caption {
    fn from(text: String) -> Caption {
        Caption { text, token_ids: Vec::new() }
    }
}

/// Builds a captioner on the worker thread (so a GPU context is created where it is used).
pub type CaptionerFactory = Box<dyn FnOnce() -> anyhow::Result<Box<dyn Captioner>> + Send>;

/// What a batch produced.
#[derive(Debug)]
pub struct BatchOutput {
    /// The model version that produced every caption of this batch.
    pub model_version: String,
    /// One result per input: a caption, or why this input alone failed (`caption_failed`, or
    /// `internal_error` when captioning it panicked).
    pub captions: Vec<Result<Caption, Rejection>>,
    pub inference: Duration,
}

enum Request {
    Caption { batch: Vec<Vec<f32>>, reply: oneshot::Sender<BatchOutput> },
    Swap { factory: CaptionerFactory, reply: oneshot::Sender<anyhow::Result<String>> },
    SwapAdapter { dir: Option<std::path::PathBuf>, version: String, reply: oneshot::Sender<anyhow::Result<String>> },
}

/// Handle to the captioner thread.
pub struct CaptionWorker {
    tx: std::sync::mpsc::SyncSender<Request>,
    version: Arc<RwLock<String>>,
    processor: ImageProcessorConfig,
    swaps_adapters: bool,
    thread: Option<JoinHandle<()>>,
}

impl CaptionWorker {
    /// Starts the thread and builds the model on it; returns once the model is loaded.
    pub fn spawn(factory: CaptionerFactory) -> anyhow::Result<CaptionWorker> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(2);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("captioner".into())
            .spawn(move || {
                let mut model = match factory() {
                    Ok(m) => {
                        let _ = ready_tx.send(Ok((
                            m.model_version().to_owned(),
                            m.processor().clone(),
                            m.swaps_adapters(),
                        )));
                        m
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if model.decoder().is_some() && continuous::serve(&mut model, &rx) {
                    return;
                }
                while let Ok(req) = rx.recv() {
                    match req {
                        Request::Caption { batch, reply } => {
                            let _ = reply.send(run_batch(model.as_mut(), &batch));
                        }
                        swap => handle_swap(&mut model, swap),
                    }
                }
            })
            .context("spawning the captioner thread")?;
        let (version, processor, swaps_adapters) = ready_rx
            .recv()
            .context("the captioner thread died while loading the model")?
            .context("loading the model")?;
        Ok(CaptionWorker {
            tx,
            version: Arc::new(RwLock::new(version)),
            processor,
            swaps_adapters,
            thread: Some(thread),
        })
    }

    /// The version of the model currently loaded.
    pub fn model_version(&self) -> String {
        self.version.read().expect("version lock").clone()
    }

    /// The preprocessing the loaded model expects (fixed for the worker's life).
    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    /// Whether the model swaps adapters in place ([`Captioner::swaps_adapters`]); a whole-model swap
    /// keeps the kind of model, so this is fixed for the worker's life too.
    pub fn swaps_adapters(&self) -> bool {
        self.swaps_adapters
    }

    /// Captions one batch on the worker thread.
    pub async fn caption(&self, batch: Vec<Vec<f32>>) -> anyhow::Result<BatchOutput> {
        self.submit(batch).await?.await.context("the captioner thread stopped")
    }

    /// Queues one batch on the worker thread; its result comes on the returned channel. Batches
    /// submitted before earlier ones finish share the decoder's rows (continuous batching).
    pub async fn submit(&self, batch: Vec<Vec<f32>>) -> anyhow::Result<oneshot::Receiver<BatchOutput>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Caption { batch, reply }).await?;
        Ok(rx)
    }

    /// Replaces the model between two batches. On error the running model stays.
    pub async fn swap(&self, factory: CaptionerFactory) -> anyhow::Result<String> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Swap { factory, reply }).await?;
        let version = rx.await.context("the captioner thread stopped")??;
        *self.version.write().expect("version lock") = version.clone();
        Ok(version)
    }

    /// Switches the adapter between two batches, in place; on error the running model stays.
    pub async fn swap_adapter(&self, dir: Option<std::path::PathBuf>, version: String) -> anyhow::Result<String> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::SwapAdapter { dir, version, reply }).await?;
        let version = rx.await.context("the captioner thread stopped")??;
        *self.version.write().expect("version lock") = version.clone();
        Ok(version)
    }

    async fn send(&self, req: Request) -> anyhow::Result<()> {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(req))
            .await?
            .map_err(|_| anyhow::anyhow!("the captioner thread stopped"))
    }
}

impl Drop for CaptionWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current batch.
        let (dead_tx, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.tx, dead_tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a swap request on the captioner thread (between batches, or with no row running).
fn handle_swap(model: &mut Box<dyn Captioner>, req: Request) {
    match req {
        Request::Caption { .. } => unreachable!("only swaps are handled here"),
        Request::SwapAdapter { dir, version, reply } => {
            let r =
                contained("swapping the adapter", || model.swap_adapter(dir.as_deref(), &version)).map(|()| version);
            let _ = reply.send(r);
        }
        Request::Swap { factory, reply } => {
            let result = contained("loading the new model", factory).and_then(|new| {
                anyhow::ensure!(
                    new.processor() == model.processor(),
                    "the new model expects different preprocessing ({:?}) than the running one ({:?}); restart \
                     the service to switch base models",
                    new.processor(),
                    model.processor()
                );
                Ok(new)
            });
            let _ = reply.send(result.map(|new| {
                *model = new;
                model.model_version().to_owned()
            }));
        }
    }
}

/// Runs `f`; an error or a panic becomes its message.
fn contained_panic<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
    }
}

/// Runs `f`, turning a panic into an error: one bad input or adapter must not take the captioner
/// thread (and with it the service) down.
fn contained<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => Err(anyhow::anyhow!("{what} panicked: {}", panic_message(&*panic))),
    }
}

/// Captions a batch; when the batch fails or panics, each input is captioned alone so only the
/// culprits are rejected (`internal_error` for a panic, with its message; `caption_failed` otherwise).
fn run_batch(model: &mut dyn Captioner, batch: &[Vec<f32>]) -> BatchOutput {
    let started = Instant::now();
    let refs: Vec<&[f32]> = batch.iter().map(|v| v.as_slice()).collect();
    let whole = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.caption_batch(&refs)));
    let captions = match whole {
        Ok(Ok(c)) if c.len() == batch.len() => c.into_iter().map(Ok).collect(),
        first => {
            let why = match first {
                Ok(Ok(c)) => format!("returned {} captions for {} inputs", c.len(), batch.len()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
            };
            tracing::warn!(batch = batch.len(), "batch captioning failed ({why}); captioning one by one");
            // Isolate the culprit: only the inputs that fail alone are rejected.
            refs.iter()
                .map(|one| {
                    let alone = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        model.caption_batch(std::slice::from_ref(one))
                    }));
                    match alone {
                        Ok(Ok(mut c)) if c.len() == 1 => Ok(c.remove(0)),
                        Ok(Ok(c)) => Err(Rejection::new(
                            RejectKind::CaptionFailed,
                            format!("returned {} captions for 1 input", c.len()),
                        )),
                        Ok(Err(e)) => Err(Rejection::new(RejectKind::CaptionFailed, format!("{e:#}"))),
                        Err(panic) => Err(Rejection::new(
                            RejectKind::InternalError,
                            format!("captioning panicked: {}", panic_message(&*panic)),
                        )),
                    }
                })
                .collect()
        }
    };
    BatchOutput { model_version: model.model_version().to_owned(), captions, inference: started.elapsed() }
}
