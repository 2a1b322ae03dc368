//! `blip2idc dlq replay`: after a fix (objects restored, a bucket allowed, a bad deploy rolled back),
//! re-publishes the dead letters of chosen kinds to the input topic, payload and key unchanged.
//!
//! The dead-letter topic is read from its beginning up to its end as of the start (dead letters newer
//! than the start are left: the command ends even while consumers keep adding to it), with a reader
//! of its own that commits nothing.
//! Replaying is idempotent where it matters: a pair captioned twice is one row (the store upserts on
//! `event_id` and the model version), so replaying the same dead letters again costs model time only.
//! A replayed message carries the headers `blip2idc.replayed_from` (`topic:partition:offset` of the
//! dead letter) and `blip2idc.replayed_kind`; an event that fails again is dead-lettered again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::RejectKind;

/// What to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Kinds to replay (names of [`RejectKind`]); empty means every kind.
    pub kinds: Vec<String>,
    /// Only dead letters produced at or after this time (their `dead_lettered_at` header).
    pub since: Option<DateTime<Utc>>,
    /// Count what would be replayed, publish nothing.
    pub dry_run: bool,
    /// Stop after this many replayed.
    pub limit: Option<usize>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplaySummary {
    /// Dead letters read.
    pub read: usize,
    /// Replayed (or, in a dry run, to replay), by kind.
    pub replayed: BTreeMap<String, usize>,
    /// Read but not chosen, by kind.
    pub skipped: BTreeMap<String, usize>,
    pub dry_run: bool,
}

impl ReplaySummary {
    pub fn total_replayed(&self) -> usize {
        self.replayed.values().sum()
    }
}

/// Checks `kinds` against the known ones, with a message listing them.
pub fn check_kinds(kinds: &[String]) -> anyhow::Result<()> {
    let known: Vec<&str> = RejectKind::ALL.iter().map(|k| k.as_str()).collect();
    for k in kinds {
        anyhow::ensure!(
            known.contains(&k.as_str()),
            "unknown dead-letter kind {k:?}; the kinds are: {}",
            known.join(", ")
        );
    }
    Ok(())
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// Replays from `cfg.dlq_topic` on `dlq_brokers` (default `cfg.brokers`) to `cfg.input_topic` on
/// `cfg.brokers`. Blocking (run it on a blocking thread); `progress` is called with the messages read.
pub fn replay(
    cfg: &KafkaConfig,
    dlq_brokers: Option<&str>,
    opts: &ReplayOptions,
    progress: &dyn Fn(usize, usize),
) -> anyhow::Result<ReplaySummary> {
    check_kinds(&opts.kinds)?;
    let timeout = Duration::from_secs(10);
    let group = format!("{}-dlq-replay", cfg.group_id);
    let settings =
        [("group.id", group.as_str()), ("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")];
    let reader: BaseConsumer =
        super::client_config(cfg, dlq_brokers.unwrap_or(&cfg.brokers), "dlq-replay", &settings).create()?;
    let meta = reader
        .fetch_metadata(Some(&cfg.dlq_topic), timeout)
        .map_err(|e| anyhow::anyhow!("reading the metadata of {}: {e}", cfg.dlq_topic))?;
    let topic = meta.topics().first().ok_or_else(|| anyhow::anyhow!("no topic {}", cfg.dlq_topic))?;
    if let Some(e) = topic.error() {
        anyhow::bail!("dead-letter topic {}: {e:?}", cfg.dlq_topic);
    }
    // Where each partition ends now: the replay reads up to there.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut total = 0usize;
    for p in topic.partitions() {
        let (low, high) = reader
            .fetch_watermarks(&cfg.dlq_topic, p.id(), timeout)
            .map_err(|e| anyhow::anyhow!("watermarks of {}[{}]: {e}", cfg.dlq_topic, p.id()))?;
        if high > low {
            ends.insert(p.id(), high);
            total += (high - low) as usize;
        }
        tpl.add_partition_offset(&cfg.dlq_topic, p.id(), Offset::Beginning)?;
    }
    let mut summary = ReplaySummary { dry_run: opts.dry_run, ..Default::default() };
    reader.assign(&tpl)?;

    let producer: Option<ThreadedProducer<Deliveries>> = if opts.dry_run {
        None
    } else {
        let settings = [("acks", "all"), ("enable.idempotence", "true"), ("message.timeout.ms", "30000")];
        Some(
            super::client_config(cfg, &cfg.brokers, "dlq-replay", &settings)
                .create_with_context(Deliveries::default())?,
        )
    };
    // A partition is read once its end as of the start is reached and then nothing more arrives
    // for a second (some brokers report the end late), or once a dead letter newer than the start
    // arrives (it is not replayed: the partition is paused).
    let started_ms = Utc::now().timestamp_millis();
    let mut last_message = Instant::now();
    let mut newer_seen = std::collections::BTreeSet::new();
    loop {
        let all_newer = newer_seen.len() == topic.partitions().len();
        if all_newer || (ends.is_empty() && last_message.elapsed() >= Duration::from_secs(1)) {
            break;
        }
        let Some(msg) = reader.poll(Duration::from_millis(200)) else {
            anyhow::ensure!(
                ends.is_empty() || last_message.elapsed() < Duration::from_secs(30),
                "no dead letter arrived for 30 s with {} partition(s) not read to their end",
                ends.len()
            );
            continue;
        };
        let m = msg.map_err(|e| anyhow::anyhow!("reading {}: {e}", cfg.dlq_topic))?;
        last_message = Instant::now();
        let (partition, offset) = (m.partition(), m.offset());
        if m.timestamp().to_millis().is_some_and(|t| t > started_ms) {
            ends.remove(&partition);
            if newer_seen.insert(partition) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&cfg.dlq_topic, partition);
                reader.pause(&tpl)?;
            }
            continue;
        }
        if ends.get(&partition).is_some_and(|&end| offset + 1 >= end) {
            ends.remove(&partition);
        }
        summary.read += 1;
        progress(summary.read, total);
        let kind = header(&m, "error.kind").unwrap_or("unknown").to_owned();
        let chosen_kind = opts.kinds.is_empty() || opts.kinds.contains(&kind);
        let recent = match (opts.since, header(&m, "dead_lettered_at")) {
            (None, _) => true,
            (Some(since), Some(at)) => DateTime::parse_from_rfc3339(at).is_ok_and(|at| at >= since),
            (Some(_), None) => false,
        };
        let room = opts.limit.is_none_or(|l| summary.total_replayed() < l);
        if !(chosen_kind && recent && room) {
            *summary.skipped.entry(kind).or_default() += 1;
            continue;
        }
        if let Some(p) = &producer {
            let from = format!("{}:{partition}:{offset}", cfg.dlq_topic);
            let headers = OwnedHeaders::new()
                .insert(Header { key: "blip2idc.replayed_from", value: Some(from.as_str()) })
                .insert(Header { key: "blip2idc.replayed_kind", value: Some(kind.as_str()) });
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&cfg.input_topic).headers(headers);
            if let Some(payload) = m.payload() {
                record = record.payload(payload);
            }
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            p.send(record).map_err(|(e, _)| anyhow::anyhow!("publishing {from} to {}: {e}", cfg.input_topic))?;
        }
        *summary.replayed.entry(kind).or_default() += 1;
    }
    if let Some(p) = &producer {
        p.flush(Duration::from_secs(60))
            .map_err(|e| anyhow::anyhow!("waiting for the replayed events to be acknowledged: {e}"))?;
        let failed = p.context().failed.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(
            failed == 0,
            "{failed} of {} replayed events were not acknowledged by the brokers (the rest were; replaying \
             again is safe)",
            summary.total_replayed()
        );
    }
    Ok(summary)
}

/// Counts deliveries the brokers did not acknowledge.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicUsize,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!("a replayed event was not delivered: {e}");
            self.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
