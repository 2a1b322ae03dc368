//! The committer: the one place offsets are committed, and the consumer closed.
//!
//! The pipeline only reports completions ([`Committer::complete`]) and asks for an early commit after a
//! dead letter ([`Committer::commit_soon`]). Positions come from the [`OffsetTracker`]: the contiguous
//! done watermark of each partition. They are committed
//! - every `kafka.commit_interval`, asynchronously, re-sending whatever the broker has not acknowledged
//!   yet (a failed commit is retried; a position counts as committed only once acknowledged, see
//!   `acknowledged`, called from the commit callback);
//! - on partition revoke, synchronously, inside the rebalance callback (`commit_revoked`), off the
//!   async worker threads;
//! - at shutdown, synchronously, within `shutdown.commit_timeout` ([`Committer::commit_final`]), after
//!   which the consumer leaves its group within `shutdown.consumer_close_timeout` ([`Committer::close`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::offsets::{OffsetTracker, Ticket, TopicPartition};
use super::KafkaConsumer;

/// Commits the done watermark; shared by the pipeline's steps.
pub struct Committer {
    consumer: Arc<KafkaConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    soon: Notify,
}

impl Committer {
    pub(super) fn new(consumer: Arc<KafkaConsumer>, tracker: Arc<Mutex<OffsetTracker>>) -> Committer {
        Committer { consumer, tracker, soon: Notify::new() }
    }

    /// An event is done (stored or dead-lettered): its offset may now be committed.
    pub fn complete(&self, ticket: &Ticket) {
        self.tracker.lock().expect("tracker lock").complete(ticket);
    }

    /// Asks for a commit now rather than at the next interval.
    pub fn commit_soon(&self) {
        self.soon.notify_one();
    }

    /// Commits every `every`, and at once (at most every 50 ms) when asked, until `stop`.
    pub async fn run(&self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.commit_unacknowledged(),
                _ = self.soon.notified() => {
                    self.commit_unacknowledged();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Sends (asynchronously) every position the broker has not acknowledged yet.
    fn commit_unacknowledged(&self) {
        let positions = self.tracker.lock().expect("tracker lock").unacknowledged();
        if !positions.is_empty() {
            if let Err(e) = self.consumer.commit(&tpl_of(&positions), CommitMode::Async) {
                tracing::warn!("offset commit failed: {e}");
            }
        }
    }

    /// Commits every tracked position synchronously, waiting at most `timeout` for the broker; returns
    /// the positions the broker acknowledged (empty when it failed or did not answer in time: events
    /// since the last commit will then be redelivered).
    pub async fn commit_final(self: &Arc<Self>, timeout: Duration) -> Vec<(TopicPartition, i64)> {
        let me = self.clone();
        let commit = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(TopicPartition, i64)>> {
            let positions = me.tracker.lock().expect("tracker lock").positions();
            if !positions.is_empty() {
                me.consumer.commit(&tpl_of(&positions), CommitMode::Sync)?;
                me.tracker.lock().expect("tracker lock").acknowledge(&positions);
            }
            Ok(positions)
        });
        match tokio::time::timeout(timeout, commit).await {
            Ok(Ok(Ok(c))) => {
                tracing::info!(positions = ?c, "final offsets committed");
                c
            }
            Ok(Ok(Err(e))) => {
                tracing::error!("final commit failed (events since the last commit will be redelivered): {e}");
                Vec::new()
            }
            Ok(Err(e)) => {
                tracing::error!("final commit task failed: {e}");
                Vec::new()
            }
            Err(_) => {
                tracing::error!(
                    ?timeout,
                    "the final commit got no answer in time (events since the last commit will be redelivered)"
                );
                Vec::new()
            }
        }
    }

    /// Leaves the group (the revoke commits what is done) and closes the consumer, giving up after
    /// `timeout`.
    pub async fn close(self: Arc<Self>, timeout: Duration) {
        let closing = tokio::task::spawn_blocking(move || {
            self.consumer.unsubscribe();
            drop(self);
        });
        if tokio::time::timeout(timeout, closing).await.is_err() {
            tracing::warn!(?timeout, "the consumer did not close in time; exiting anyway");
        }
    }
}

/// The revoke-time commit, from the rebalance callback: the revoked partitions' positions, waited for
/// off the async workers; then the tracker forgets those partitions.
pub(super) fn commit_revoked<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tracker: &Mutex<OffsetTracker>,
    tps: &[TopicPartition],
) {
    let mut tracker = tracker.lock().expect("tracker lock");
    let positions = tracker.positions_of(tps);
    if !positions.is_empty() {
        match blocking(|| consumer.commit(&tpl_of(&positions), CommitMode::Sync)) {
            Ok(()) => tracing::info!(?positions, "committed stored offsets of revoked partitions"),
            Err(e) => tracing::warn!("commit on revoke failed (events will be redelivered): {e}"),
        }
    }
    tracker.revoke(tps);
}

/// From the commit callback: the positions the broker acknowledged.
pub(super) fn acknowledged(tracker: &Mutex<OffsetTracker>, offsets: &TopicPartitionList) -> Vec<(TopicPartition, i64)> {
    let acked: Vec<(TopicPartition, i64)> = offsets
        .elements()
        .iter()
        .filter_map(|e| {
            e.offset().to_raw().filter(|o| *o >= 0).map(|o| (TopicPartition::new(e.topic(), e.partition()), o))
        })
        .collect();
    tracker.lock().expect("tracker lock").acknowledge(&acked);
    acked
}

/// Runs blocking `f` without stalling the other tasks of a multi-thread runtime's worker (rebalance
/// callbacks run inside `recv()`, on a worker thread).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn tpl_of(positions: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, off) in positions {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off)).expect("valid offset");
    }
    tpl
}
