//! Service configuration: `config/default.toml` (compiled in) < `--config FILE` < `BLIP2IDC_*` env.
//!
//! Every value is validated at start-up with a message naming the key, so a bad deploy fails before it
//! touches Kafka. Secrets (the database URL's password) are wrapped in [`Secret`] and never printed.

pub mod choices;
pub mod review;
pub mod training;
pub use choices::{BlasChoice, DeviceSpec, Dtype, LogFormat, OffsetReset, PreprocessMode};
pub use review::{ReviewConfig, ReviewUser, Role};
pub use training::{AugmentConfig, PadMasking, RetrainConfig, TrainConfig};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Everything wrong with a configuration, one message per problem, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

/// The default configuration, as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The whole configuration: one struct per `[section]` of `config/default.toml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The input topic, the consumer group and the dead-letter topic.
    pub kafka: KafkaConfig,
    /// Where the images are read from, and what may be read.
    pub s3: S3Config,
    /// Limits on the images decoded.
    pub decode: DecodeConfig,
    /// How a decoded pair becomes the model's input.
    pub preprocess: PreprocessConfig,
    /// The change analysis beside the caption, and skipping the model for unchanged copies.
    pub analysis: AnalysisConfig,
    /// PostgreSQL: captions, the model registry, training runs, the breaker.
    pub database: DatabaseConfig,
    /// The captioning model and how it runs.
    pub model: ModelConfig,
    /// Batching, concurrency and the memory in flight.
    pub pipeline: PipelineConfig,
    /// The dead-letter topic's producer and its rate breaker.
    pub dlq: DlqConfig,
    /// The admin port (health probes and metrics).
    pub admin: AdminConfig,
    /// How a stop drains, commits and leaves the group.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// The periodic LoRA fine-tuning job (`blip2idc retrain`).
    pub retrain: RetrainConfig,
    /// The analysts' web app (`blip2idc review`).
    pub review: ReviewConfig,
}

/// `[kafka]`: the consumer and the topics.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The consumer group; replicas of one deployment share it.
    pub group_id: String,
    /// Where image-pair events arrive.
    pub input_topic: String,
    /// Where rejected events go, with their reason (must differ from `input_topic`).
    pub dlq_topic: String,
    /// The client id the brokers see (and `<client_id>-dlq` for the dead-letter producer).
    pub client_id: String,
    /// The group session timeout: a consumer silent this long is removed from the group.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often the contiguous "done" watermark of each partition is committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Where a group without a committed offset starts.
    pub auto_offset_reset: OffsetReset,
    /// Statistics (partition lag) refresh; `0s` disables.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Larger event payloads are dead-lettered (`event_too_large`) without being parsed.
    pub max_event_bytes: usize,
    /// Extra librdkafka properties (`sasl.password`, `ssl.key.password`, ...). Values whose key names a
    /// secret are redacted wherever the configuration is shown ([`KafkaProperties`]).
    #[serde(default)]
    pub properties: KafkaProperties,
}

/// `kafka.properties`: a map whose `Debug` and `Serialize` redact every value whose key names a
/// password, secret, token, credential, private key or JAAS config.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    fn shown(&self) -> BTreeMap<&str, &str> {
        self.0.iter().map(|(k, v)| (k.as_str(), if secret_key(k) { "***" } else { v.as_str() })).collect()
    }
}

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shown().fmt(f)
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shown().serialize(s)
    }
}

/// Whether a setting's name says its value is a secret.
pub fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "jaas", "private", "passphrase", "api.key", "apikey"]
        .iter()
        .any(|w| k.contains(w))
}

/// `[s3]`: reading the images.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// A custom endpoint for S3-compatible servers; unset for AWS.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// `http://host/bucket/key` addressing (most S3-compatible servers need it).
    pub force_path_style: bool,
    /// The only buckets an event may make the service read.
    pub allowed_buckets: Vec<String>,
    /// Larger objects are rejected (`object_too_large`) without being read.
    pub max_object_bytes: u64,
    /// One request's timeout (a timeout is a transient failure, retried).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connection timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Pairs fetched at once (each pair is two concurrent GETs).
    pub max_concurrency: usize,
    /// Backoff for transient failures (5xx, timeouts, throttling, connection errors): the first delay.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// ...and the longest.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long one event's transient failures are retried before it is dead-lettered (`fetch_failed`).
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
}

/// `[decode]`: decoding limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Wider images are rejected (`image_too_large`) before any pixel is allocated.
    pub max_width: u32,
    /// Taller images are rejected likewise.
    pub max_height: u32,
    /// The most a decoder may allocate for one image.
    pub max_alloc_bytes: u64,
}

/// `[preprocess]`: how an image pair becomes the model's input.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// `exact` (Pillow's pixels, the default) or `fast` (JPEGs decoded at a reduced DCT scale).
    pub mode: PreprocessMode,
    /// Decode and resample a pair's two images on two threads when fewer pairs than cores are being
    /// decoded (pairs of at least a megapixel): lower latency at light load, no change under load.
    pub split_large_pairs: bool,
}

/// `[analysis]`: the change analysis ([`crate::analysis`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Analyse every pair (stored as `changed`, `regions`, `actions`).
    pub enabled: bool,
    /// Store pairs found unchanged with `unchanged_caption`, without running the model.
    pub skip_unchanged: bool,
    /// The caption stored for a skipped pair (in the captions' style).
    pub unchanged_caption: String,
}

impl AnalysisConfig {
    /// Whether a pair with this analysis is stored without the model: found unchanged, and
    /// `skip_unchanged` set.
    pub fn skips(&self, analysis: Option<&crate::analysis::Analysis>) -> bool {
        self.skip_unchanged && analysis.is_some_and(|a| !a.changed)
    }
}

/// `[database]`: PostgreSQL.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host/db`; from `DATABASE_URL` in practice (it carries the password).
    pub url: Secret,
    /// Pool size.
    pub max_connections: u32,
    /// How long acquiring a connection may wait.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Backoff of retried database writes: the first delay.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// ...and the longest.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Apply migrations when `serve` starts (they are idempotent).
    pub migrate_on_start: bool,
}

/// `[model]`: the captioning model.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A `save_pretrained` directory or a hub id such as `Salesforce/blip2-opt-2.7b`.
    pub checkpoint: String,
    /// A PEFT LoRA adapter directory, merged at load; optional.
    pub adapter: Option<String>,
    /// Recorded with every caption; derived from the checkpoint and adapter when unset.
    pub version: Option<String>,
    /// The weights' floating-point type.
    pub dtype: Dtype,
    /// Where the model runs.
    pub device: DeviceSpec,
    /// Rows decoded at once with continuous batching (pairs join as others finish); 0 runs each
    /// batch of `pipeline.max_batch_size` pairs to completion instead.
    pub max_running: usize,
    /// Most tokens generated per caption (the authors' 77; at most what the model's positions allow).
    pub max_new_tokens: usize,
    /// How often the registry is polled for a newly promoted adapter (LISTEN/NOTIFY too); `0s` disables hot swap.
    #[serde(with = "humantime_serde")]
    pub reload_poll_interval: Duration,
    /// CPU GEMM for f32: `auto`, `off` or a CBLAS library (see `model::blas`).
    pub blas: BlasChoice,
}

/// `[pipeline]`: batching, concurrency, memory.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// A batch is captioned when it has this many pairs...
    pub max_batch_size: usize,
    /// ...or its first pair waited this long.
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    /// Events between consumption and commit; when reached, partitions pause (backpressure).
    pub max_in_flight: usize,
    /// Pairs decoded and preprocessed at once (on blocking threads).
    pub decode_concurrency: usize,
    /// Memory the events in flight may hold: fetched objects, decoded pixels, preprocessing buffers.
    pub max_in_flight_bytes: u64,
    /// Events are waiting but none finished for this long: `/readyz` fails and the stall metric rises.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

/// `[dlq]`: dead letters and the breaker.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Bootstrap servers of the dead-letter topic's cluster, when it is not `kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// The breaker looks at the last this many outcomes...
    pub breaker_window: usize,
    /// ...and trips when more than this share of them were dead-lettered...
    #[serde(deserialize_with = "float")]
    pub breaker_max_ratio: f64,
    /// ...once at least this many were seen.
    pub breaker_min_events: usize,
    /// A tripped breaker resets itself after this long; "0s": only `blip2idc breaker reset` does.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Backoff of dead-letter produce retries (the dead-letter cluster unavailable).
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// ...and the longest.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

/// `[admin]`: the admin port.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin port (`/healthz`, `/startedz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
}

/// `[shutdown]`: stopping.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// In-flight events may finish for this long after a stop is asked; then they are left for redelivery (exit code 4).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long leaving the group may take.
    #[serde(with = "humantime_serde")]
    pub consumer_close_timeout: Duration,
    /// How long the final offset commit may wait for the broker.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
}

/// `[log]`: logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (human-readable on a terminal, JSON lines otherwise), `json` or `pretty`.
    pub format: LogFormat,
    /// tracing-subscriber `EnvFilter` syntax; `RUST_LOG` overrides it.
    pub filter: String,
}

/// A string that never appears in logs or `Debug` output; `Serialize` writes a redacted form.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// A printable form: URLs keep everything but their password.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// `scheme://user:password@host/...` → `scheme://user:***@host/...`, and the value of every query
/// parameter whose name names a secret (`password`, `sslpassword`, `token`, ...) → `***`. Works on
/// strings that are not valid URLs too (an error message quoting one): the user information ends at
/// the last `@` before the query, so a password may hold `/`, `@` or `:`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], Some(&url[q + 1..])),
        None => (url, None),
    };
    let mut out = base.to_owned();
    let rest_start = out.find("://").map_or(0, |i| i + 3);
    if let Some(at) = out[rest_start..].rfind('@') {
        if let Some(colon) = out[rest_start..rest_start + at].find(':') {
            out.replace_range(rest_start + colon + 1..rest_start + at, "***");
        }
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if secret_key(k) => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Deserializes a float key from a number or from a string in any notation Rust parses (`1e-3`,
/// `2.5E+2`, `0.001`): environment overrides reach serde as strings whenever figment's own parser
/// does not read them as numbers, which is the case for scientific notation. Every `f64` key of the
/// configuration uses it (a test walks them all).
pub fn float<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Float;
    impl serde::de::Visitor<'_> for Float {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number (e.g. 0.001 or 1e-3)")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<f64, E> {
            match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => Err(E::custom(format!("{v:?} is not a number (expected e.g. 0.001 or 1e-3)"))),
            }
        }
    }
    d.deserialize_any(Float)
}

impl Config {
    /// The shipped defaults, `config/default.toml` alone (every default of every section is there and
    /// nowhere else; `tests::defaults_are_valid` proves the file parses and validates).
    pub fn defaults() -> Config {
        Figment::from(Toml::string(DEFAULT_TOML)).extract().expect("config/default.toml is a valid configuration")
    }

    /// Loads defaults, then `file` (if any), then the environment; then validates. A value of the wrong
    /// type or outside a setting's choices fails here, before [`Config::validate`] lists the rest.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            fig = fig.merge(("database.url", url));
        }
        // BLIP2IDC_CONFIG (the --config file) and BLIP2IDC_OPERATOR (who runs `models promote`) are
        // command-line settings, not keys of the configuration.
        fig = fig.merge(Env::prefixed("BLIP2IDC_").ignore(&["CONFIG", "OPERATOR"]).split("__"));
        let cfg: Config = fig.extract().map_err(|e| ConfigErrors(e.into_iter().map(|e| e.to_string()).collect()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every cross-field and range constraint; the error lists all problems at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs: Vec<String> = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg)
            }
        };
        let a = &self.analysis;
        check(
            a.enabled || !a.skip_unchanged,
            "analysis.skip_unchanged needs analysis.enabled = true (set skip_unchanged = false to turn the analysis off)"
                .into(),
        );
        let caption = a.unchanged_caption.trim();
        check(
            !caption.is_empty() && caption.len() <= 200 && !caption.contains('\0'),
            format!("analysis.unchanged_caption must be 1-200 characters of text, got {:?}", a.unchanged_caption),
        );
        let k = &self.kafka;
        check(!k.brokers.trim().is_empty(), "kafka.brokers is empty; expected host:port[,host:port]".into());
        for b in k.brokers.split(',') {
            check(
                b.trim().rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
                format!("kafka.brokers entry {b:?} is not host:port"),
            );
        }
        for (name, t) in [("kafka.input_topic", &k.input_topic), ("kafka.dlq_topic", &k.dlq_topic)] {
            check(valid_topic(t), format!("{name} {t:?} is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"));
        }
        check(
            k.input_topic != k.dlq_topic,
            format!("kafka.dlq_topic must differ from kafka.input_topic (both are {:?})", k.input_topic),
        );
        check(!k.group_id.is_empty(), "kafka.group_id is empty".into());
        check(!k.commit_interval.is_zero(), "kafka.commit_interval must be > 0".into());
        check(k.max_event_bytes >= 256, "kafka.max_event_bytes must be at least 256".into());
        for key in k.properties.keys() {
            check(
                !matches!(key.as_str(), "enable.auto.commit" | "enable.auto.offset.store" | "group.id"),
                format!("kafka.properties.{key} is managed by blip2idc and cannot be overridden"),
            );
        }

        let s = &self.s3;
        if let Some(ep) = &s.endpoint {
            check(
                ep.starts_with("http://") || ep.starts_with("https://"),
                format!("s3.endpoint {ep:?} must start with http:// or https://"),
            );
        }
        check(!s.region.is_empty(), "s3.region is empty".into());
        check(!s.allowed_buckets.is_empty(), "s3.allowed_buckets is empty: the service could read nothing".into());
        for b in &s.allowed_buckets {
            check(crate::s3uri::valid_bucket(b), format!("s3.allowed_buckets entry {b:?} is not a valid bucket name"));
        }
        check(s.max_object_bytes > 0, "s3.max_object_bytes must be > 0".into());
        check(s.max_concurrency > 0, "s3.max_concurrency must be > 0".into());
        check(!s.request_timeout.is_zero(), "s3.request_timeout must be > 0".into());
        check(
            s.retry_initial_backoff <= s.retry_max_backoff,
            "s3.retry_initial_backoff must not exceed s3.retry_max_backoff".into(),
        );
        check(
            s.retry_timeout >= s.retry_max_backoff,
            format!(
                "s3.retry_timeout ({:?}) must be at least s3.retry_max_backoff ({:?})",
                s.retry_timeout, s.retry_max_backoff
            ),
        );

        let d = &self.decode;
        check(d.max_width > 0 && d.max_height > 0, "decode.max_width and decode.max_height must be > 0".into());
        check(d.max_alloc_bytes >= 1 << 20, "decode.max_alloc_bytes must be at least 1 MiB".into());

        let db = &self.database;
        check(
            db.url.expose().starts_with("postgres://") || db.url.expose().starts_with("postgresql://"),
            format!("database.url {} must be a postgres:// URL", db.url.redacted()),
        );
        check(db.max_connections > 0, "database.max_connections must be > 0".into());
        check(
            db.retry_initial_backoff <= db.retry_max_backoff,
            "database.retry_initial_backoff must not exceed database.retry_max_backoff".into(),
        );

        let m = &self.model;
        check(!m.checkpoint.is_empty(), "model.checkpoint is empty".into());
        check(m.max_new_tokens > 0, "model.max_new_tokens must be > 0".into());

        let p = &self.pipeline;
        check(p.max_batch_size > 0, "pipeline.max_batch_size must be > 0".into());
        check(
            p.max_in_flight >= p.max_batch_size,
            format!(
                "pipeline.max_in_flight ({}) must be at least pipeline.max_batch_size ({})",
                p.max_in_flight, p.max_batch_size
            ),
        );
        check(p.decode_concurrency > 0, "pipeline.decode_concurrency must be > 0".into());
        check(!p.stall_timeout.is_zero(), "pipeline.stall_timeout must be > 0".into());
        let largest = (self.decode.max_width as usize, self.decode.max_height as usize);
        let px = largest.0 as u64 * largest.1 as u64;
        // The decoders' own memory at worst: a progressive JPEG's coefficients (2 bytes for each of
        // 3 full-size components), or a PNG/WebP decoder's buffer (capped at decode.max_alloc_bytes).
        let decoder = (6 * px).max(self.decode.max_alloc_bytes.min(8 * px));
        // At BLIP-2's 224² input (the model's own size changes the streaming buffers by kilobytes).
        let pair = crate::budget::pair_bytes(largest, largest, (224, 224)) + 2 * decoder;
        check(
            p.max_in_flight_bytes / 2 >= pair,
            format!(
                "pipeline.max_in_flight_bytes ({}) must be at least {} bytes: half of it must hold the decoding of \
                 a pair of the largest images decode.max_width × decode.max_height allow ({} × {}); raise it or \
                 lower those",
                p.max_in_flight_bytes,
                2 * pair,
                self.decode.max_width,
                self.decode.max_height
            ),
        );
        check(
            p.max_in_flight_bytes >= 4 * self.s3.max_object_bytes,
            format!(
                "pipeline.max_in_flight_bytes ({}) must be at least 4 × s3.max_object_bytes ({}): a pair's two \
                 objects must fit in the fetch half of the budget",
                p.max_in_flight_bytes, self.s3.max_object_bytes
            ),
        );

        let q = &self.dlq;
        check(q.breaker_window > 0, "dlq.breaker_window must be > 0".into());
        check(
            q.retry_initial_backoff <= q.retry_max_backoff,
            "dlq.retry_initial_backoff must not exceed dlq.retry_max_backoff".into(),
        );
        if let Some(b) = &q.brokers {
            check(
                b.split(',')
                    .all(|b| b.trim().rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())),
                format!("dlq.brokers {b:?} is not host:port[,host:port]"),
            );
        }
        check(
            q.breaker_max_ratio > 0.0 && q.breaker_max_ratio <= 1.0,
            format!("dlq.breaker_max_ratio is {}; expected a ratio in (0, 1]", q.breaker_max_ratio),
        );
        check(
            q.breaker_min_events <= q.breaker_window,
            "dlq.breaker_min_events must not exceed dlq.breaker_window".into(),
        );

        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.filter).is_ok(),
            format!("log.filter {:?} is not a valid tracing filter", self.log.filter),
        );

        self.retrain.check(&mut errs);
        self.review.check(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("rendering the configuration as TOML")
    }
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;

    fn defaults() -> Config {
        Config::defaults()
    }

    #[test]
    fn defaults_are_valid() {
        defaults().validate().unwrap();
    }

    /// The code's defaults are the file's: nothing to keep in step.
    #[test]
    fn retrain_defaults_come_from_the_default_file() {
        let from_file = serde_json::to_value(defaults().retrain).unwrap();
        assert_eq!(serde_json::to_value(RetrainConfig::default()).unwrap(), from_file);
        assert_eq!(from_file["train"]["lr"], 5e-5);
        assert_eq!(from_file["work_dir"], serde_json::json!(training::default_work_dir()));
    }

    #[test]
    fn adapters_default_to_a_bucket_of_their_own() {
        let c = defaults();
        assert!(!c.s3.allowed_buckets.contains(&c.retrain.adapter_bucket), "{:?}", c.retrain.adapter_bucket);
    }

    #[test]
    fn validation_names_every_bad_key() {
        let mut c = defaults();
        c.kafka.dlq_topic = c.kafka.input_topic.clone();
        c.pipeline.max_batch_size = 0;
        c.dlq.breaker_max_ratio = 1.5;
        c.retrain.lora_r = 0;
        c.retrain.train.grad_accum = 0;
        let err = c.validate().unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let err = err.to_string();
        for needle in [
            "kafka.dlq_topic",
            "pipeline.max_batch_size",
            "dlq.breaker_max_ratio",
            "retrain.lora_r",
            "retrain.train.grad_accum",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    /// A value outside a setting's choices is refused when the configuration is read, naming the key.
    #[test]
    fn choices_outside_their_set_are_refused_with_the_key() {
        for (toml, key) in [
            ("[model]\ndtype = \"f64\"\n", "model.dtype"),
            ("[model]\ndevice = \"gpu\"\n", "model.device"),
            ("[model]\nblas = \" \"\n", "model.blas"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[kafka]\nauto_offset_reset = \"middle\"\n", "kafka.auto_offset_reset"),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("c.toml", toml)?;
                let err = format!("{:#}", Config::load(Some(Path::new("c.toml"))).unwrap_err());
                assert!(err.contains(key), "{key} missing from: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn file_and_env_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[pipeline]\nmax_batch_size = 3\n[kafka]\ngroup_id = \"g\"\n")?;
            jail.set_env("BLIP2IDC_KAFKA__GROUP_ID", "from-env");
            jail.set_env("DATABASE_URL", "postgres://u:hunter2@db/x");
            // Command-line variables under the same prefix are not configuration keys.
            jail.set_env("BLIP2IDC_CONFIG", "c.toml");
            jail.set_env("BLIP2IDC_OPERATOR", "alice");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.pipeline.max_batch_size, 3);
            assert_eq!(c.kafka.group_id, "from-env");
            assert_eq!(c.database.url.expose(), "postgres://u:hunter2@db/x");
            let shown = format!("{:?} {}", c.database, c.to_redacted_toml().unwrap());
            assert!(!shown.contains("hunter2"), "password leaked: {shown}");
            Ok(())
        });
    }

    /// Every float key of the configuration, found by walking the defaults.
    fn float_keys(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, f64)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    path.push(k.clone());
                    float_keys(v, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Number(n) if n.is_f64() => out.push((path.clone(), n.as_f64().unwrap())),
            _ => {}
        }
    }

    #[test]
    fn every_float_key_takes_scientific_notation_from_env_and_files() {
        let mut keys = Vec::new();
        float_keys(&serde_json::to_value(defaults()).unwrap(), &mut Vec::new(), &mut keys);
        assert!(keys.len() >= 10, "{keys:?}");
        assert!(keys.iter().any(|(p, _)| p.join(".") == "retrain.train.lr"), "{keys:?}");
        for (path, default) in keys {
            let dotted = path.join(".");
            let read = |c: &Config| {
                let mut v = serde_json::to_value(c).unwrap();
                for k in &path {
                    v = v[k].take();
                }
                v.as_f64().unwrap()
            };
            // From the environment: the default written as 5e-5, 1.6e1, 2e-1, ...
            figment::Jail::expect_with(|jail| {
                let var = format!("BLIP2IDC_{}", path.join("__").to_uppercase());
                jail.set_env(&var, format!("{default:e}"));
                let c = Config::load(None).map_err(|e| format!("{var}={default:e}: {e}"))?;
                assert_eq!(read(&c), default, "{var}={default:e}");
                jail.set_env(&var, format!("{default:E}"));
                assert_eq!(read(&Config::load(None).map_err(|e| e.to_string())?), default, "{var}={default:E}");
                Ok(())
            });
            // From a file: as a TOML float in scientific notation, and as a string.
            let (table, key) = path.split_at(path.len() - 1);
            for value in [format!("{default:e}"), format!("\"{default:e}\"")] {
                figment::Jail::expect_with(|jail| {
                    jail.create_file("c.toml", &format!("[{}]\n{} = {value}\n", table.join("."), key[0]))?;
                    let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| format!("{dotted} = {value}: {e}"))?;
                    assert_eq!(read(&c), default, "{dotted} = {value}");
                    Ok(())
                });
            }
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("BLIP2IDC_RETRAIN__TRAIN__LR", "fast");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("\"fast\" is not a number"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn preprocess_mode_is_exact_unless_chosen() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!((c.preprocess.mode, c.preprocess.split_large_pairs), (PreprocessMode::Exact, true));
            jail.set_env("BLIP2IDC_PREPROCESS__MODE", "fast");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.preprocess.mode, PreprocessMode::Fast);
            jail.set_env("BLIP2IDC_PREPROCESS__MODE", "quick");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("preprocess.mode") && err.contains("quick"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn analysis_settings_are_checked() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert!(c.analysis.enabled && c.analysis.skip_unchanged);
            assert_eq!(c.analysis.unchanged_caption, "no visible change");
            jail.set_env("BLIP2IDC_ANALYSIS__ENABLED", "false");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("analysis.skip_unchanged needs analysis.enabled"), "{err}");
            jail.set_env("BLIP2IDC_ANALYSIS__SKIP_UNCHANGED", "false");
            jail.set_env("BLIP2IDC_ANALYSIS__UNCHANGED_CAPTION", " ");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("analysis.unchanged_caption must be 1-200 characters"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn review_users_are_checked_with_their_names() {
        let mut c = defaults();
        assert!(c.review.users.is_empty() && c.review.check_serving().is_err(), "nobody can sign in by default");
        c.review.users = vec![
            ReviewUser {
                name: "alice".into(),
                role: Role::Reviewer,
                password_hash: Some("hunter2".into()),
                token_sha256: None,
            },
            ReviewUser {
                name: "bob".into(),
                role: Role::Viewer,
                password_hash: None,
                token_sha256: Some("abc".into()),
            },
            ReviewUser { name: "bob".into(), role: Role::Admin, password_hash: None, token_sha256: None },
        ];
        c.review.categories.push("Not OK".into());
        c.review.proxy_user_header = "X-Auth-Request-Email".into();
        let err = c.validate().unwrap_err().to_string();
        for needle in [
            "review.users[0] (\"alice\"): password_hash is not an Argon2 PHC string",
            "review.users[1] (\"bob\"): token_sha256 must be 64 hex digits",
            "review.users[2] (\"bob\"): the name appears more than once",
            "review.categories entry \"Not OK\"",
            "review.proxy_user_header is set but review.trusted_proxies is empty",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
        assert!(!err.contains("hunter2"), "a misplaced password is not echoed: {err}");
        // From `blip2idc review hash-password` (its format is what is checked here).
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$i6uxlT0vgBxGgLy2uh4X8A$jRuBtH+AD69D4XhkyhX/aRJjGU+8y/1IwjoIC/g8/U4"
            .to_owned();
        c.review.users =
            vec![ReviewUser { name: "alice".into(), role: Role::Admin, password_hash: Some(hash), token_sha256: None }];
        c.review.categories.pop();
        c.review.trusted_proxies = vec!["10.0.0.1".parse().unwrap()];
        c.validate().unwrap();
        c.review.check_serving().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[pipeline]\nmax_bach_size = 3\n")?;
            let err = Config::load(Some(Path::new("c.toml"))).unwrap_err().to_string();
            assert!(err.contains("max_bach_size"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:p@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db?password=x&a=b"), "postgres://h/db?password=***&a=b");
        for (url, secrets) in [
            ("postgres://u:pa/ss@h/db", vec!["pa/ss"]),
            ("postgres://u:p@ss:w/rd@h:5432/db", vec!["p@ss:w/rd"]),
            ("postgres://u:a@b@h/db?sslpassword=s3cr&password=t0p&application_name=x", vec!["a@b", "s3cr", "t0p"]),
            ("not a url u:hunter2@h?password=x", vec!["hunter2", "password=x"]),
            ("postgres://h/db?sslmode=verify-full&sslpassword=k3y", vec!["k3y"]),
        ] {
            let shown = redact_url(url);
            for secret in secrets {
                assert!(!shown.contains(secret), "{url} -> {shown}");
            }
            assert!(shown.contains("***"), "{shown}");
        }
        assert!(redact_url("postgres://u:x@h/db?application_name=x").ends_with("application_name=x"));
    }

    #[test]
    fn kafka_properties_with_secret_names_are_redacted() {
        let mut c = defaults();
        for (k, v) in [
            ("sasl.password", "pw-1"),
            ("ssl.key.password", "pw-2"),
            ("sasl.jaas.config", "org.apache.kafka...required username=\"u\" password=\"pw-3\";"),
            ("sasl.oauthbearer.client.secret", "pw-4"),
            ("ssl.keystore.password", "pw-5"),
            ("sasl.username", "alice"),
        ] {
            c.kafka.properties.0.insert(k.into(), v.into());
        }
        let shown = format!("{} {:?}", c.to_redacted_toml().unwrap(), c);
        // What `blip2idc config` prints is a configuration file again (secrets aside).
        let back: Config = figment::Figment::from(figment::providers::Toml::string(&c.to_redacted_toml().unwrap()))
            .extract()
            .expect("the printed configuration parses as a config file");
        assert_eq!(back.kafka.brokers, c.kafka.brokers);
        for secret in ["pw-1", "pw-2", "pw-3", "pw-4", "pw-5"] {
            assert!(!shown.contains(secret), "{secret} shown");
        }
        assert!(shown.contains("alice"), "non-secret properties stay visible");
    }
}
