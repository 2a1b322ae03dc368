//! The source: the Kafka consumer, its rebalance hooks, backpressure and offset commits.
//!
//! Offsets are never auto-committed. Each consumed offset is registered in the [`OffsetTracker`] and
//! committed only when it and every earlier offset of its partition are stored or dead-lettered, by
//! the [`Committer`] (`commit.rs`): periodically, on partition revoke and at shutdown.
//!
//! Backpressure: every event in flight holds a permit; when none is left, the assigned partitions are
//! paused while the loop keeps polling (so the member stays in its group and sees rebalances), and are
//! resumed once half the permits are back. A rebalance resets librdkafka's pause state, so the pause is
//! re-applied to the new assignment.
//!
//! Rebalances may be eager (every partition revoked, then the new set assigned) or incremental
//! (`partition.assignment.strategy=cooperative-sticky`: only the moved partitions are revoked or
//! assigned). Messages waiting for a permit carry the assignment epoch they were received in; after a
//! rebalance only those of revoked (or revoked and re-assigned) partitions are dropped, to be
//! redelivered from the committed position. Kept partitions keep their waiting messages, so their
//! commits never pass an event that was not processed.

pub mod commit;
pub mod offsets;
pub mod stash;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::health::Health;
pub use commit::Committer;
use offsets::{OffsetTracker, Ticket, TopicPartition};
use stash::Stash;

/// The consumer type the service uses.
pub type KafkaConsumer = StreamConsumer<SourceContext>;

/// One consumed message on its way through the pipeline. Dropping it without completing its ticket
/// leaves its offset uncommitted (it will be redelivered); completing it releases its permit.
pub struct Job {
    pub message: OwnedMessage,
    pub ticket: Ticket,
    pub received_at: Instant,
    pub permit: OwnedSemaphorePermit,
}

impl Job {
    /// Where the message came from: kept with its caption, and in its dead letter's headers.
    pub fn origin(&self) -> Origin {
        let m = &self.message;
        Origin {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// A message's place in Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Rebalance hooks, statistics and commit logging.
pub struct SourceContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    health: Arc<Health>,
    rebalanced: AtomicBool,
}

impl SourceContext {
    /// True once after each rebalance.
    fn take_rebalanced(&self) -> bool {
        self.rebalanced.swap(false, Ordering::AcqRel)
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(crate::metrics::PARTITION_LAG, "topic" => topic.clone(), "partition" => id.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!("kafka client error: {error}: {reason}");
    }

    /// librdkafka's own log lines (including `kafka.properties.debug` output) go to tracing.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            L::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
            L::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps = tps_of(tpl);
            commit::commit_revoked(consumer, &self.tracker, &tps);
            tracing::info!(partitions = ?tps, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                tracing::info!(partitions = ?tps, "partitions assigned");
                self.tracker.lock().expect("tracker lock").assign(tps);
                self.health.group_joined.store(true, Ordering::Relaxed);
                self.rebalanced.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => self.rebalanced.store(true, Ordering::Release),
            Rebalance::Error(e) => tracing::error!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                metrics::counter!(crate::metrics::COMMITS, "outcome" => "ok").increment(1);
                let acked = commit::acknowledged(&self.tracker, offsets);
                tracing::debug!(offsets = ?acked, "offsets committed");
            }
            Err(e) => {
                metrics::counter!(crate::metrics::COMMITS, "outcome" => "error").increment(1);
                tracing::warn!("offset commit failed: {e}");
            }
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

/// The consumer plus the state it shares with the rest of the pipeline.
pub struct Source {
    consumer: Arc<KafkaConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    committer: Arc<Committer>,
}

impl Source {
    /// Creates the consumer and subscribes to the input topic.
    pub fn new(cfg: &KafkaConfig, health: Arc<Health>) -> anyhow::Result<Source> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let ctx = SourceContext { tracker: tracker.clone(), health, rebalanced: AtomicBool::new(false) };
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("client.id", &cfg.client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", cfg.auto_offset_reset.as_str())
            .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
            .set("statistics.interval.ms", cfg.statistics_interval.as_millis().to_string());
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: KafkaConsumer = cc.create_with_context(ctx)?;
        consumer.subscribe(&[&cfg.input_topic])?;
        let consumer = Arc::new(consumer);
        let committer = Arc::new(Committer::new(consumer.clone(), tracker.clone()));
        Ok(Source { consumer, tracker, committer })
    }

    /// The committer of this consumer's offsets.
    pub fn committer(&self) -> Arc<Committer> {
        self.committer.clone()
    }

    /// The consume loop; returns when `stop` fires. Jobs go to `out`; `permits` bounds the jobs in
    /// flight (a permit returns to the pool when its job is completed or dropped).
    pub async fn run(&self, out: mpsc::Sender<Job>, permits: Arc<Semaphore>, stop: CancellationToken) {
        let total = permits.available_permits();
        let resume_at = (total / 2).max(1);
        let ctx = self.consumer.context();
        let mut stash = Stash::default();
        let mut paused = false;
        loop {
            if ctx.take_rebalanced() {
                self.after_rebalance(&mut stash, paused);
            }
            if paused && permits.available_permits() >= resume_at {
                self.set_paused(false);
                paused = false;
            }
            // Dispatch what is stashed while permits last.
            while !paused {
                let Some((epoch, msg)) = stash.pop() else { break };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        if !self.dispatch(epoch, msg, permit, &out).await {
                            return;
                        }
                    }
                    Err(_) => {
                        stash.unpop((epoch, msg));
                        self.set_paused(true);
                        paused = true;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = self.consumer.recv() => match r {
                    Ok(m) => {
                        let m = m.detach();
                        if ctx.take_rebalanced() {
                            self.after_rebalance(&mut stash, paused);
                        }
                        let (partition, offset) = (m.partition(), m.offset());
                        if !stash.push(&self.tracker.lock().expect("tracker lock"), m) {
                            tracing::debug!(partition, offset, "dropping a message of an unassigned partition");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("kafka consume error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // While paused, wake up regularly to check permits and rebalances.
                _ = tokio::time::sleep(Duration::from_millis(20)), if paused => {}
            }
        }
    }

    /// Drops the waiting messages of partitions revoked (or re-assigned) by the rebalance, keeping the
    /// others in order, and re-applies the pause to the new assignment.
    fn after_rebalance(&self, stash: &mut Stash, paused: bool) {
        let dropped = stash.retain_assigned(&self.tracker.lock().expect("tracker lock"));
        if dropped > 0 {
            tracing::debug!(dropped, kept = stash.len(), "dropped waiting messages of revoked partitions");
        }
        if paused {
            self.set_paused(true);
        }
    }

    async fn dispatch(
        &self,
        epoch: u64,
        msg: OwnedMessage,
        permit: OwnedSemaphorePermit,
        out: &mpsc::Sender<Job>,
    ) -> bool {
        metrics::counter!(crate::metrics::CONSUMED).increment(1);
        let tp = TopicPartition::new(msg.topic(), msg.partition());
        let Some(ticket) = self.tracker.lock().expect("tracker lock").register_in(&tp, msg.offset(), epoch) else {
            tracing::debug!(?tp, offset = msg.offset(), "dropping a message of a revoked partition");
            return true;
        };
        out.send(Job { message: msg, ticket, received_at: Instant::now(), permit }).await.is_ok()
    }

    fn set_paused(&self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("reading the assignment failed: {e}");
                return;
            }
        };
        if assignment.count() == 0 {
            return;
        }
        let r = if pause { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) };
        match r {
            Ok(()) => {
                metrics::gauge!(crate::metrics::PAUSED).set(if pause { 1.0 } else { 0.0 });
                tracing::debug!(paused = pause, partitions = assignment.count(), "backpressure");
            }
            Err(e) => tracing::warn!("pause/resume failed: {e}"),
        }
    }
}
