//! The captioner thread's loop for models that decode step by step ([`StepDecoder`]): continuous
//! batching. Pairs of every queued request join the running decode batch as rows finish, instead of
//! each request waiting for the previous one's longest caption.
//!
//! What the fixed-batch loop guarantees still holds:
//! - each request gets one [`BatchOutput`] with one result per pair, labelled with the version that
//!   produced all of them: a swap waits until the running rows are done and every request already
//!   started is fully admitted, and requests that had not started then run on the new version;
//! - a failure is isolated: when admitting or a step fails (or panics), the decoder is cleared and
//!   each affected pair is captioned alone with [`Captioner::caption_batch`], so only the pairs
//!   that fail alone are rejected.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{contained_panic, run_batch, BatchOutput, Caption, Captioner, Request};
use crate::error::{RejectKind, Rejection};

/// A request being captioned.
struct Open {
    reply: oneshot::Sender<BatchOutput>,
    pixels: Vec<Vec<f32>>,
    results: Vec<Option<Result<Caption, Rejection>>>,
    left: usize,
    admitted: usize,
    version: String,
    started: Instant,
}

/// Runs until the request channel closes (returns true), or until a swap installed a captioner
/// without a step decoder (returns false, every request answered: the caller goes on with fixed
/// batches).
pub(super) fn serve(model: &mut Box<dyn Captioner>, rx: &std::sync::mpsc::Receiver<Request>) -> bool {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut queue: VecDeque<u64> = VecDeque::new(); // requests with pairs left to admit, in order
    let mut running: Vec<u64> = Vec::new(); // keys of the rows in the decoder
    let mut deferred: VecDeque<Request> = VecDeque::new(); // swaps waiting for a drained decoder
    let mut next_id = 0u64;
    loop {
        // Take requests: wait when there is nothing to do, else only look.
        let idle = running.is_empty() && queue.is_empty();
        let mut incoming = Vec::new();
        if idle && deferred.is_empty() {
            match rx.recv() {
                Ok(r) => incoming.push(r),
                Err(_) => return true,
            }
        }
        incoming.extend(rx.try_iter());
        for req in incoming {
            match req {
                Request::Caption { batch, reply } => {
                    let id = next_id;
                    next_id += 1;
                    let n = batch.len();
                    if n == 0 {
                        let _ = reply.send(run_batch(model.as_mut(), &batch));
                        continue;
                    }
                    open.insert(
                        id,
                        Open {
                            reply,
                            pixels: batch,
                            results: (0..n).map(|_| None).collect(),
                            left: n,
                            admitted: 0,
                            version: String::new(),
                            started: Instant::now(),
                        },
                    );
                    queue.push_back(id);
                }
                swap => deferred.push_back(swap),
            }
        }

        // A swap runs once the decoder is drained and no started request waits for admission.
        let started_waiting = queue.front().is_some_and(|id| open[id].admitted > 0);
        if !deferred.is_empty() && running.is_empty() && !started_waiting {
            while let Some(swap) = deferred.pop_front() {
                super::handle_swap(model, swap);
            }
            if model.decoder().is_none() {
                // The new captioner batches whole requests: the queued ones (none started) run so.
                for id in queue.drain(..) {
                    let o = open.remove(&id).expect("queued requests are open");
                    let _ = o.reply.send(run_batch(model.as_mut(), &o.pixels));
                }
                return false;
            }
            continue;
        }

        // Admit queued pairs into the free rows (only started requests while a swap waits), once
        // half the rows are free (or nothing runs): fewer, larger prefills and cache copies, which
        // measured faster on CPU than admitting each pair as soon as a row frees.
        let capacity = model.decoder().map_or(0, |d| d.capacity());
        let queued: usize = queue.iter().map(|id| open[id].pixels.len() - open[id].admitted).sum();
        let free = capacity.saturating_sub(running.len());
        let worth = running.is_empty() || free >= (capacity / 2).max(1).min(queued.max(1));
        let mut admit: Vec<u64> = Vec::new();
        while worth && running.len() + admit.len() < capacity {
            let Some(&id) = queue.front() else { break };
            let o = open.get_mut(&id).expect("queued requests are open");
            if !deferred.is_empty() && o.admitted == 0 {
                break;
            }
            if o.admitted == 0 {
                o.version = model.model_version().to_owned();
            }
            admit.push(id << 32 | o.admitted as u64);
            o.admitted += 1;
            if o.admitted == o.pixels.len() {
                queue.pop_front();
            }
        }
        if !admit.is_empty() {
            let refs: Vec<&[f32]> =
                admit.iter().map(|&k| open[&(k >> 32)].pixels[(k & 0xffff_ffff) as usize].as_slice()).collect();
            let admitted = contained_panic(|| model.decoder().expect("a step decoder").admit(&refs, &admit));
            match admitted {
                Ok(done) => {
                    running.extend(admit.iter().copied());
                    finish(&mut open, &mut running, done);
                }
                Err(why) => {
                    tracing::warn!(
                        pairs = admit.len(),
                        "admitting pairs failed ({why}); captioning the batch's pairs one by one"
                    );
                    recover(model, &mut open, &mut running, admit);
                }
            }
        }

        if running.is_empty() {
            continue;
        }
        match contained_panic(|| model.decoder().expect("a step decoder").step()) {
            Ok(done) => finish(&mut open, &mut running, done),
            Err(why) => {
                tracing::warn!(rows = running.len(), "a decoding step failed ({why}); captioning its pairs one by one");
                let rows = std::mem::take(&mut running);
                recover(model, &mut open, &mut running, rows);
            }
        }
    }
}

/// Records finished rows and answers the requests they complete.
fn finish(open: &mut HashMap<u64, Open>, running: &mut Vec<u64>, done: Vec<(u64, Caption)>) {
    for (key, caption) in done {
        running.retain(|&k| k != key);
        record(open, key, Ok(caption));
    }
}

fn record(open: &mut HashMap<u64, Open>, key: u64, result: Result<Caption, Rejection>) {
    let id = key >> 32;
    let Some(o) = open.get_mut(&id) else { return };
    let slot = &mut o.results[(key & 0xffff_ffff) as usize];
    if slot.is_none() {
        o.left -= 1;
    }
    *slot = Some(result);
    if o.left == 0 {
        let o = open.remove(&id).expect("present");
        let captions = o.results.into_iter().map(|r| r.expect("every pair answered")).collect();
        let _ = o.reply.send(BatchOutput { model_version: o.version, captions, inference: o.started.elapsed() });
    }
}

/// After a failed admission or step: clears the decoder and captions every affected pair alone,
/// rejecting only those that fail alone. Rows still running when the decoder was cleared are
/// captioned alone too.
fn recover(model: &mut Box<dyn Captioner>, open: &mut HashMap<u64, Open>, running: &mut Vec<u64>, mut keys: Vec<u64>) {
    if let Some(d) = model.decoder() {
        d.clear();
    }
    keys.append(running);
    for key in keys {
        let pixels = open[&(key >> 32)].pixels[(key & 0xffff_ffff) as usize].clone();
        let out = run_batch(model.as_mut(), std::slice::from_ref(&pixels));
        let result = out.captions.into_iter().next().unwrap_or_else(|| {
            Err(Rejection::new(RejectKind::CaptionFailed, "the captioner returned nothing for this pair"))
        });
        record(open, key, result);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CaptionWorker, CaptionerFactory, StepDecoder};
    use super::*;
    use crate::model::preprocess::ImageProcessorConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Pixel value that makes the fake model panic, in a batch and in a decoding step alike.
    const POISON: f32 = 13.0;

    /// Captions a pair as "pair <first pixel>" after `first pixel % 3` steps; panics on [`POISON`].
    struct Fake {
        processor: ImageProcessorConfig,
        running: Vec<(u64, f32, usize)>,
        /// Whether it decodes step by step; the plain kind batches whole requests.
        steps: bool,
        version: &'static str,
        /// Pairs admitted so far (lets a test wait until a request has started).
        admitted: Arc<AtomicUsize>,
    }

    impl Fake {
        fn new(steps: bool, version: &'static str) -> Fake {
            let admitted = Arc::new(AtomicUsize::new(0));
            Fake { processor: ImageProcessorConfig::for_image_size(2), running: Vec::new(), steps, version, admitted }
        }
    }

    impl Captioner for Fake {
        fn model_version(&self) -> &str {
            self.version
        }
        fn processor(&self) -> &ImageProcessorConfig {
            &self.processor
        }
        fn caption_batch(&mut self, pixel_values: &[&[f32]]) -> anyhow::Result<Vec<Caption>> {
            assert!(pixel_values.iter().all(|p| p[0] != POISON), "poison pixels");
            Ok(pixel_values.iter().map(|p| Caption::from(format!("pair {}", p[0]))).collect())
        }
        fn decoder(&mut self) -> Option<&mut dyn StepDecoder> {
            if self.steps {
                Some(self)
            } else {
                None
            }
        }
    }

    impl StepDecoder for Fake {
        fn capacity(&self) -> usize {
            2
        }
        fn admit(&mut self, pixel_values: &[&[f32]], keys: &[u64]) -> anyhow::Result<Vec<(u64, Caption)>> {
            self.admitted.fetch_add(keys.len(), Ordering::SeqCst);
            self.running.extend(keys.iter().zip(pixel_values).map(|(&k, p)| (k, p[0], p[0] as usize % 3)));
            Ok(Vec::new())
        }
        fn step(&mut self) -> anyhow::Result<Vec<(u64, Caption)>> {
            assert!(self.running.iter().all(|r| r.1 != POISON), "poison in a step");
            self.running.iter_mut().for_each(|r| r.2 = r.2.saturating_sub(1));
            let (done, running): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|r| r.2 == 0);
            self.running = running;
            Ok(done.into_iter().map(|(k, v, _)| (k, Caption::from(format!("pair {v}")))).collect())
        }
        fn clear(&mut self) {
            self.running.clear();
        }
    }

    /// A caption worker on a stepping fake labelled `version`, a runtime to talk to it, and the
    /// fake's count of admitted pairs.
    fn stepping_worker(version: &'static str) -> (CaptionWorker, tokio::runtime::Runtime, Arc<AtomicUsize>) {
        let fake = Fake::new(true, version);
        let admitted = fake.admitted.clone();
        let factory: CaptionerFactory = Box::new(move || Ok(Box::new(fake) as Box<dyn Captioner>));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        (CaptionWorker::spawn(factory).unwrap(), rt, admitted)
    }

    /// A pair of the fake's inputs whose caption is "pair {v}".
    fn pair(v: f32) -> Vec<f32> {
        vec![v; 12]
    }

    #[test]
    fn a_failing_step_rejects_only_the_pair_that_fails_alone() {
        let (worker, rt, _) = stepping_worker("fake");
        rt.block_on(async {
            let first = worker.submit(vec![pair(1.0), pair(POISON), pair(5.0)]).await.unwrap();
            let second = worker.submit(vec![pair(2.0), pair(4.0)]).await.unwrap();
            let (first, second) = (first.await.unwrap(), second.await.unwrap());
            let text = |o: &BatchOutput| -> Vec<Result<String, RejectKind>> {
                o.captions.iter().map(|c| c.as_ref().map(|c| c.text.clone()).map_err(|r| r.kind)).collect()
            };
            assert_eq!(
                text(&first),
                vec![Ok("pair 1".into()), Err(RejectKind::InternalError), Ok("pair 5".into())],
                "only the poisoned pair is rejected"
            );
            assert_eq!(text(&second), vec![Ok("pair 2".into()), Ok("pair 4".into())]);
            assert_eq!(first.model_version, "fake");
        });
    }

    #[test]
    fn swapping_to_a_captioner_without_steps_goes_on_with_whole_batches() {
        let (worker, rt, admitted) = stepping_worker("stepping");
        rt.block_on(async {
            let before = worker.submit(vec![pair(1.0), pair(2.0)]).await.unwrap();
            // Swap once `before` has started (a request not started when a swap arrives runs on the
            // new captioner, by design): it must then finish on the stepping one.
            while admitted.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let plain: CaptionerFactory = Box::new(|| Ok(Box::new(Fake::new(false, "plain")) as Box<dyn Captioner>));
            assert_eq!(worker.swap(plain).await.unwrap(), "plain");
            let after = worker.caption(vec![pair(4.0)]).await.unwrap();
            let before = before.await.unwrap();
            assert_eq!(before.model_version, "stepping");
            assert_eq!(before.captions.len(), 2);
            assert_eq!(after.model_version, "plain");
            assert_eq!(after.captions[0].as_ref().unwrap().text, "pair 4");
        });
    }
}
