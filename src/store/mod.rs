//! The store: captions into PostgreSQL, one transaction per batch, idempotent.
//!
//! A batch is written with three `UNNEST` statements in one transaction: the model version (registered
//! if new), the image pairs (first delivery wins) and the captions, upserted on
//! `(event_id, model_version)` so a redelivered event never makes a second row. Any failure rolls the
//! whole batch back; the caller retries it (no offset moves until it commits).

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;
use crate::event::ImagePairEvent;
use crate::retry::{Backoff, Retry};

pub mod breaker;
pub mod read;
mod registry;
pub mod review;
pub mod training;
pub use registry::{
    ModelVersion, Promoted, Promotion, PromotionAction, PromotionListener, PromotionRow, VersionRow, PROMOTION_CHANNEL,
};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// One caption to store.
#[derive(Clone, Debug)]
pub struct CaptionRecord {
    pub event: std::sync::Arc<ImagePairEvent>,
    /// The message the event came in (stored as `kafka_topic`, `kafka_partition`, `kafka_offset`).
    pub origin: crate::source::Origin,
    pub model_version: String,
    pub caption: String,
    pub inference_seconds: f64,
    pub end_to_end_seconds: f64,
    pub batch_size: i32,
    /// Whether the change analysis found a local change (`None`: not analysed).
    pub changed: Option<bool>,
    /// The changed regions, `[x0, y0, x1, y1)` in the original's pixels (`None`: not analysed).
    pub regions: Option<Vec<[u32; 4]>>,
    /// C2PA action names.
    pub actions: Vec<String>,
    /// Stored without running the model (found unchanged).
    pub model_skipped: bool,
}

/// Connection pool plus retry policy.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    backoff: Backoff,
}

impl Store {
    /// A lazily connecting pool: the service starts (and reports not-ready) while the database is down.
    pub fn connect_lazy(cfg: &DatabaseConfig) -> anyhow::Result<Store> {
        let opts: PgConnectOptions = cfg
            .url
            .expose()
            .parse()
            .with_context(|| format!("database.url {} is not a valid PostgreSQL URL", cfg.url.redacted()))?;
        let opts = opts.application_name("blip2idc").log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(cfg.connect_timeout)
            .connect_lazy_with(opts);
        Ok(Store { pool, backoff: Backoff::new(cfg.retry_initial_backoff, cfg.retry_max_backoff) })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (idempotent; concurrent runs serialise on sqlx's advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await.context("applying database migrations")
    }

    /// Like [`Store::migrate`], retrying while the database is unreachable, until `cancel`.
    pub async fn migrate_retrying(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        self.retrying("migrate", cancel, || self.migrate()).await
    }

    /// True when a trivial query succeeds within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await, Ok(Ok(_)))
    }

    /// Stores a batch in one transaction.
    pub async fn store_batch(&self, rows: &[CaptionRecord]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let mut versions: Vec<&str> = rows.iter().map(|r| r.model_version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        sqlx::query(
            "INSERT INTO model_versions (version, base_model)
             SELECT v, 'unknown' FROM UNNEST($1::text[]) AS v ON CONFLICT (version) DO NOTHING",
        )
        .bind(&versions)
        .execute(&mut *tx)
        .await
        .context("registering model versions")?;

        let ids: Vec<&str> = rows.iter().map(|r| r.event.event_id.as_str()).collect();
        let originals: Vec<String> = rows.iter().map(|r| r.event.original.to_string()).collect();
        let republished: Vec<String> = rows.iter().map(|r| r.event.republished.to_string()).collect();
        let sources: Vec<Option<&str>> = rows.iter().map(|r| r.event.source_url.as_deref()).collect();
        let observed: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.event.observed_at).collect();
        let attrs: Vec<Json<&serde_json::Map<String, serde_json::Value>>> =
            rows.iter().map(|r| Json(&r.event.attributes)).collect();
        let topics: Vec<&str> = rows.iter().map(|r| r.origin.topic.as_str()).collect();
        let partitions: Vec<i32> = rows.iter().map(|r| r.origin.partition).collect();
        let offsets: Vec<i64> = rows.iter().map(|r| r.origin.offset).collect();
        sqlx::query(
            "INSERT INTO image_pairs (event_id, original_uri, republished_uri, source_url, observed_at,
                                      attributes, kafka_topic, kafka_partition, kafka_offset)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                  $6::jsonb[], $7::text[], $8::int4[], $9::int8[])
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&originals)
        .bind(&republished)
        .bind(&sources)
        .bind(&observed)
        .bind(&attrs)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .execute(&mut *tx)
        .await
        .context("inserting image pairs")?;

        let model_versions: Vec<&str> = rows.iter().map(|r| r.model_version.as_str()).collect();
        let captions: Vec<String> = rows.iter().map(|r| r.caption.replace('\0', "")).collect();
        let inference: Vec<f64> = rows.iter().map(|r| r.inference_seconds).collect();
        let e2e: Vec<f64> = rows.iter().map(|r| r.end_to_end_seconds).collect();
        let sizes: Vec<i32> = rows.iter().map(|r| r.batch_size).collect();
        let changed: Vec<Option<bool>> = rows.iter().map(|r| r.changed).collect();
        let regions: Vec<Option<Json<&Vec<[u32; 4]>>>> = rows.iter().map(|r| r.regions.as_ref().map(Json)).collect();
        // Ragged arrays cannot be UNNESTed: each row's actions travel as a JSON array.
        let actions: Vec<Json<&Vec<String>>> = rows.iter().map(|r| Json(&r.actions)).collect();
        let skipped: Vec<bool> = rows.iter().map(|r| r.model_skipped).collect();
        sqlx::query(
            "INSERT INTO captions (event_id, model_version, caption, inference_seconds, end_to_end_seconds,
                                   batch_size, changed, regions, actions, model_skipped)
             SELECT e, m, c, i, t, b, ch, r, ARRAY(SELECT jsonb_array_elements_text(a)), s
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::int4[],
                         $7::bool[], $8::jsonb[], $9::jsonb[], $10::bool[]) AS u(e, m, c, i, t, b, ch, r, a, s)
             ON CONFLICT (event_id, model_version) DO NOTHING",
        )
        .bind(&ids)
        .bind(&model_versions)
        .bind(&captions)
        .bind(&inference)
        .bind(&e2e)
        .bind(&sizes)
        .bind(&changed)
        .bind(&regions)
        .bind(&actions)
        .bind(&skipped)
        .execute(&mut *tx)
        .await
        .context("inserting captions")?;
        tx.commit().await.context("committing the batch")?;
        Ok(())
    }

    /// [`Store::store_batch`], retried with backoff until it commits or `cancel` fires.
    pub async fn store_batch_retrying(&self, rows: &[CaptionRecord], cancel: &CancellationToken) -> anyhow::Result<()> {
        self.retrying("store", cancel, || self.store_batch(rows)).await
    }

    async fn retrying<'a, F, Fut>(
        &'a self,
        step: &'static str,
        cancel: &CancellationToken,
        mut op: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + 'a,
    {
        Retry::new(step, self.backoff)
            .cancelled_by(cancel)
            .about(&"database")
            .run(&mut op, |_| true)
            .await
            .map_err(|gave_up| gave_up.into_last().context(format!("cancelled while retrying {step}")))
    }
}
