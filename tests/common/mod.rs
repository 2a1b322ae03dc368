//! Shared harness of the integration tests: they run against the real local stack started by
//! `deploy/local/up.sh` (PostgreSQL, tansu, s3s-fs) with the endpoints of `deploy/local/env`.
//! Every test gets its own topics, consumer group, bucket and event-id prefix.
#![allow(dead_code)]

pub mod webdriver;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blip2idc::caption::{Caption, Captioner, CaptionerFactory};
use blip2idc::config::Config;
use blip2idc::model::preprocess::ImageProcessorConfig;
use blip2idc_dev as devtools;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

/// Loads `deploy/local/env` into the process environment (without overriding what is set).
pub fn load_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/env");
        for line in std::fs::read_to_string(path).expect("deploy/local/env").lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                if std::env::var_os(k).is_none() {
                    std::env::set_var(k, v);
                }
            }
        }
    });
}

/// A unique, lower-case name for this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 100_000_000;
    format!("{prefix}-{}-{t}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A test's isolated slice of the stack.
pub struct Scope {
    pub cfg: Config,
    pub prefix: String,
    pub bucket: String,
}

impl Scope {
    /// Creates topics (3 input partitions) and a bucket for this test.
    pub async fn new(name: &str) -> Scope {
        load_env();
        blip2idc::telemetry::init(blip2idc::config::LogFormat::Pretty, "info,rdkafka=warn");
        let mut cfg = Config::load(None).expect("config");
        let id = unique(name);
        cfg.kafka.input_topic = format!("{id}-in");
        cfg.kafka.dlq_topic = format!("{id}-dlq");
        cfg.kafka.group_id = format!("{id}-group");
        cfg.kafka.commit_interval = Duration::from_millis(200);
        cfg.kafka.session_timeout = Duration::from_secs(10);
        let bucket = id.replace('_', "-");
        cfg.s3.allowed_buckets = vec![bucket.clone()];
        cfg.s3.retry_initial_backoff = Duration::from_millis(50);
        cfg.s3.retry_max_backoff = Duration::from_millis(500);
        cfg.database.retry_initial_backoff = Duration::from_millis(50);
        cfg.database.retry_max_backoff = Duration::from_millis(500);
        cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
        cfg.pipeline.max_batch_wait = Duration::from_millis(20);
        cfg.shutdown.drain_timeout = Duration::from_secs(15);
        cfg.model.reload_poll_interval = Duration::ZERO;
        devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.input_topic, 3).await.expect("input topic");
        devtools::create_topic(&cfg.kafka.brokers, &cfg.kafka.dlq_topic, 1).await.expect("dlq topic");
        let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
        devtools::ensure_bucket(&s3, &bucket).await.expect("bucket");
        let store = blip2idc::store::Store::connect_lazy(&cfg.database).unwrap();
        store.migrate().await.expect("migrations");
        Scope { cfg, prefix: id, bucket }
    }

    /// Moves this scope to an S3 server of its own (the project's s3s-fs server, in-process, on a free
    /// port), optionally answering for the `_state/...` keys of `devtools::OBJECT_STATES`; the scope's
    /// bucket is created there. The server stops when the returned guard is dropped.
    pub async fn own_s3_server(&mut self, object_states: bool) -> OwnS3 {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (key, secret) =
            (std::env::var("AWS_ACCESS_KEY_ID").unwrap(), std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
        let (root, s) = (dir.path().to_owned(), stop.clone());
        tokio::spawn(async move { devtools::serve_s3(listener, &root, &key, &secret, object_states, s).await });
        self.cfg.s3.endpoint = Some(format!("http://{addr}"));
        devtools::ensure_bucket(&self.s3().await, &self.bucket).await.expect("bucket");
        OwnS3 { _dir: dir, stop }
    }

    /// Moves this scope to a database of its own, migrated (for tests whose input is a whole table).
    pub async fn fresh_database(&mut self) {
        let admin = self.store();
        let name = self.prefix.replace('-', "_");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin.pool()).await.unwrap();
        let url = self.cfg.database.url.expose().to_owned();
        let base = url.rsplit_once('/').unwrap().0;
        self.cfg.database.url = blip2idc::config::Secret::new(format!("{base}/{name}"));
        self.store().migrate().await.unwrap();
    }

    pub async fn s3(&self) -> aws_sdk_s3::Client {
        blip2idc::fetch::s3_client(&self.cfg.s3).await
    }

    pub fn store(&self) -> blip2idc::store::Store {
        blip2idc::store::Store::connect_lazy(&self.cfg.database).unwrap()
    }

    /// Uploads `n` synthetic pairs (`size` px JPEGs) and publishes their events, ids `{prefix}-{i}`.
    pub async fn seed(&self, range: std::ops::Range<u64>, size: u32) -> Vec<String> {
        let s3 = self.s3().await;
        let mut ids = Vec::new();
        for i in range {
            let (a, b, _) = devtools::synthetic_pair(i, size);
            let (ka, kb) = (format!("{i}/a.jpg"), format!("{i}/b.jpg"));
            devtools::put(&s3, &self.bucket, &ka, devtools::jpeg(&a, 90)).await.unwrap();
            devtools::put(&s3, &self.bucket, &kb, devtools::jpeg(&b, 90)).await.unwrap();
            let id = format!("{}-{i}", self.prefix);
            self.publish_json(&id, &self.event(&id, &ka, &kb)).await;
            ids.push(id);
        }
        ids
    }

    pub fn event(&self, id: &str, key_a: &str, key_b: &str) -> serde_json::Value {
        serde_json::json!({
            "event_id": id,
            "original": format!("s3://{}/{key_a}", self.bucket),
            "republished": format!("s3://{}/{key_b}", self.bucket),
            "source_url": "https://news.example/story",
            "observed_at": "2026-11-26T10:00:00Z",
            "attributes": {"test": true}
        })
    }

    pub async fn publish_json(&self, key: &str, v: &serde_json::Value) {
        self.publish_raw(key, v.to_string().as_bytes()).await;
    }

    pub async fn publish_raw(&self, key: &str, payload: &[u8]) {
        let producer = devtools::producer(&self.cfg.kafka.brokers).unwrap();
        devtools::publish(&producer, &self.cfg.kafka.input_topic, key, payload).await.unwrap();
    }

    /// Caption rows stored for this test's events.
    pub async fn caption_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM captions WHERE event_id LIKE $1 || '-%'")
            .bind(&self.prefix)
            .fetch_one(self.store().pool())
            .await
            .unwrap()
    }

    /// Distinct events with a caption.
    pub async fn captioned_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM captions WHERE event_id LIKE $1 || '-%'")
            .bind(&self.prefix)
            .fetch_one(self.store().pool())
            .await
            .unwrap()
    }

    /// Waits until `n` caption rows exist (panics after `timeout`).
    pub async fn wait_for_captions(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.caption_count().await;
            if got >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {got} of {n} captions after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of committed offsets over the input partitions (= events committed, from offset 0).
    pub fn committed_total(&self) -> i64 {
        devtools::committed_offsets(&self.cfg.kafka.brokers, &self.cfg.kafka.group_id, &self.cfg.kafka.input_topic, 3)
            .unwrap()
            .into_iter()
            .map(|o| o.max(0))
            .sum()
    }

    /// Asserts that every input partition's committed offset is its end (high watermark): each
    /// partition is checked on its own, so one partition committed past its events cannot make up
    /// for another left behind, as a sum could.
    pub fn assert_all_committed(&self, why: &str) {
        let k = &self.cfg.kafka;
        let committed = devtools::committed_offsets(&k.brokers, &k.group_id, &k.input_topic, 3).unwrap();
        let c: BaseConsumer =
            rdkafka::config::ClientConfig::new().set("bootstrap.servers", &k.brokers).create().unwrap();
        for (p, &offset) in committed.iter().enumerate() {
            let (low, high) = c.fetch_watermarks(&k.input_topic, p as i32, Duration::from_secs(10)).unwrap();
            let empty = high == low;
            assert!(offset == high || (empty && offset < 0), "{why}: partition {p} committed {offset}, end {high}");
        }
    }

    /// Reads every dead letter (waits until `expect` arrived or `timeout`).
    pub fn dead_letters(&self, expect: usize, timeout: Duration) -> Vec<DeadLetter> {
        // Assigned, not subscribed: no consumer-group round trips.
        let c: BaseConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &self.cfg.kafka.brokers)
            .set("enable.auto.commit", "false")
            .set("group.id", unique("dlq-reader"))
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&self.cfg.kafka.dlq_topic, 0, rdkafka::Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < expect && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let mut headers = std::collections::BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers
                            .insert(hd.key.to_owned(), String::from_utf8_lossy(hd.value.unwrap_or(b"")).into_owned());
                    }
                }
                out.push(DeadLetter { payload: m.payload().unwrap_or(b"").to_vec(), headers });
            }
        }
        out
    }
}

/// A TCP gate in front of a real server: while closed it accepts and drops every connection (the
/// server is unreachable for whoever is configured with the gate's address); once opened it forwards.
pub struct Gate {
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    pub async fn closed(target: &str) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (is_open, target) = (open.clone(), target.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::Relaxed) {
                    continue; // dropped: connection closed at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Gate { addr, open, task }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a scope's own S3 server running (see [`Scope::own_s3_server`]).
pub struct OwnS3 {
    _dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A deterministic captioner for tests: the caption is a hash of the pixels.
pub struct TestCaptioner {
    pub version: String,
    pub processor: ImageProcessorConfig,
    pub delay: Duration,
}

impl Captioner for TestCaptioner {
    fn model_version(&self) -> &str {
        &self.version
    }
    fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }
    fn caption_batch(&mut self, pixel_values: &[&[f32]]) -> anyhow::Result<Vec<Caption>> {
        std::thread::sleep(self.delay);
        Ok(pixel_values
            .iter()
            .map(|pv| {
                let h = pv.iter().fold(0u64, |h, v| h.wrapping_mul(31).wrapping_add(v.to_bits() as u64));
                Caption::from(format!("test caption {h:016x}"))
            })
            .collect())
    }
}

pub fn test_captioner(delay: Duration) -> CaptionerFactory {
    Box::new(move || {
        Ok(Box::new(TestCaptioner {
            version: "test-captioner-v1".into(),
            processor: ImageProcessorConfig::for_image_size(32),
            delay,
        }) as Box<dyn Captioner>)
    })
}
