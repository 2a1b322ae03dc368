//! The adapter registry (`model_versions`): versions registered, the promoted one, promotion.
//!
//! The retraining job registers each candidate with its holdout metrics and promotes it by setting
//! `promoted_at` and notifying [`PROMOTION_CHANNEL`] in the same transaction; consumers LISTEN on
//! the channel and ask for the promoted version of their base model (see `caption::reload`).

use anyhow::Context;

use super::Store;

/// The channel a promotion is announced on (payload: the version).
pub const PROMOTION_CHANNEL: &str = "blip2idc_model_promoted";

/// A model version to register.
#[derive(Clone, Debug)]
pub struct ModelVersion {
    pub version: String,
    pub base_model: String,
    pub adapter_uri: Option<String>,
}

/// The promoted version of a base model.
#[derive(Clone, Debug)]
pub struct Promoted {
    pub version: String,
    pub adapter_uri: Option<String>,
    /// Set when a consumer failed to load it (and it has not been promoted again since).
    pub load_error: Option<String>,
}

impl Store {
    /// Registers a model version if it is new (the consumers' own version at start).
    pub async fn register_model_version(&self, m: &ModelVersion) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO model_versions (version, base_model, adapter_uri) VALUES ($1, $2, $3)
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(&m.version)
        .bind(&m.base_model)
        .bind(&m.adapter_uri)
        .execute(self.pool())
        .await
        .context("registering the model version")?;
        Ok(())
    }

    /// Registers a newly trained version with its metrics; an existing version is an error.
    pub async fn register_candidate(&self, m: &ModelVersion, metrics: &serde_json::Value) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO model_versions (version, base_model, adapter_uri, metrics) VALUES ($1, $2, $3, $4)")
            .bind(&m.version)
            .bind(&m.base_model)
            .bind(&m.adapter_uri)
            .bind(metrics)
            .execute(self.pool())
            .await
            .with_context(|| format!("registering candidate {}", m.version))?;
        Ok(())
    }

    /// Promotes `version` and announces it on [`PROMOTION_CHANNEL`], atomically.
    pub async fn promote(&self, version: &str) -> anyhow::Result<()> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE model_versions SET promoted_at = now(), load_error = NULL, load_failed_at = NULL WHERE version = $1",
        )
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        anyhow::ensure!(updated == 1, "cannot promote {version}: it is not registered");
        sqlx::query("SELECT pg_notify($1, $2)").bind(PROMOTION_CHANNEL).bind(version).execute(&mut *tx).await?;
        tx.commit().await.with_context(|| format!("promoting {version}"))
    }

    /// The promoted version for `base_model` and its adapter location, if a version is promoted.
    pub async fn promoted_version(&self, base_model: &str) -> anyhow::Result<Option<(String, Option<String>)>> {
        Ok(self.promoted(base_model).await?.map(|p| (p.version, p.adapter_uri)))
    }

    /// The promoted version for `base_model`, with the load error a consumer recorded for it.
    pub async fn promoted(&self, base_model: &str) -> anyhow::Result<Option<Promoted>> {
        let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT version, adapter_uri, load_error FROM model_versions
             WHERE promoted_at IS NOT NULL AND base_model = $1 ORDER BY promoted_at DESC LIMIT 1",
        )
        .bind(base_model)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(version, adapter_uri, load_error)| Promoted { version, adapter_uri, load_error }))
    }

    /// Records that `version` could not be loaded (consumers stop retrying it until it is promoted again).
    pub async fn mark_load_failed(&self, version: &str, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE model_versions SET load_error = $2, load_failed_at = now() WHERE version = $1")
            .bind(version)
            .bind(error)
            .execute(self.pool())
            .await
            .with_context(|| format!("marking {version} as failed to load"))?;
        Ok(())
    }
}

/// A LISTEN on [`PROMOTION_CHANNEL`] (see [`Store::listen_promotions`]).
pub struct PromotionListener(sqlx::postgres::PgListener);

impl PromotionListener {
    /// The next promoted version; an error means the connection is lost (make a new listener).
    pub async fn next(&mut self) -> anyhow::Result<String> {
        Ok(self.0.recv().await?.payload().to_owned())
    }
}

impl Store {
    /// Listens for promotions (on a connection of its own).
    pub async fn listen_promotions(&self) -> anyhow::Result<PromotionListener> {
        let mut l = sqlx::postgres::PgListener::connect_with(self.pool()).await.context("no LISTEN connection")?;
        l.listen(PROMOTION_CHANNEL).await.with_context(|| format!("LISTEN {PROMOTION_CHANNEL}"))?;
        Ok(PromotionListener(l))
    }
}
