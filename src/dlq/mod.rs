//! The dead-letter queue: rejected events, verbatim, with the reason in headers.
//!
//! A dead letter carries the original payload and key, and the headers
//! `error.kind`, `error.message`, `source.topic`, `source.partition`, `source.offset`,
//! `source.timestamp` (the input message's timestamp, ms since the epoch, when it had one) and
//! `dead_lettered_at` (RFC 3339). It is produced with `acks=all` and awaited: only a delivered dead
//! letter lets its event count as done.

pub mod breaker;
pub mod replay;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::error::Rejection;
use crate::source::Origin;

/// A client of `brokers` named `<kafka.client_id>-<role>` with `settings`, then `kafka.properties`
/// (which may override any of them).
pub(crate) fn client_config(cfg: &KafkaConfig, brokers: &str, role: &str, settings: &[(&str, &str)]) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers).set("client.id", format!("{}-{role}", cfg.client_id));
    for (k, v) in settings {
        cc.set(*k, *v);
    }
    for (k, v) in &cfg.properties {
        cc.set(k, v);
    }
    cc
}

/// Producer for the dead-letter topic.
pub struct DeadLetterQueue {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterQueue {
    /// A producer for `cfg.dlq_topic` on `brokers` (the dead-letter cluster), else `cfg.brokers`.
    pub fn new(cfg: &KafkaConfig, brokers: Option<&str>) -> anyhow::Result<Self> {
        let settings = [("acks", "all"), ("message.timeout.ms", "30000"), ("linger.ms", "5")];
        let producer = client_config(cfg, brokers.unwrap_or(&cfg.brokers), "dlq", &settings).create()?;
        Ok(DeadLetterQueue { producer, topic: cfg.dlq_topic.clone() })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits for queued dead letters to be delivered.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout).map_err(|e| anyhow::anyhow!("flushing the dead-letter producer: {e}"))
    }

    /// Produces one dead letter and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        origin: &Origin,
        why: &Rejection,
    ) -> anyhow::Result<()> {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let source_ts = origin.timestamp_ms.map(|t| t.to_string());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header { key: "error.kind", value: Some(why.kind.as_str()) })
            .insert(Header { key: "error.message", value: Some(why.message.as_str()) })
            .insert(Header { key: "source.topic", value: Some(origin.topic.as_str()) })
            .insert(Header { key: "source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "source.offset", value: Some(offset.as_str()) })
            .insert(Header { key: "dead_lettered_at", value: Some(now.as_str()) });
        if let Some(ts) = &source_ts {
            headers = headers.insert(Header { key: "source.timestamp", value: Some(ts.as_str()) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| anyhow::anyhow!("producing to dead-letter topic {}: {e}", self.topic))
    }
}
