//! The adapter registry (`model_versions`): versions registered, the promoted one, promotion, the
//! promotion history (`model_promotions`) and the version each running consumer has loaded
//! (`consumer_models`).
//!
//! The retraining job registers each candidate with its holdout metrics and promotes it by setting
//! `promoted_at`, recording who and why, and notifying [`PROMOTION_CHANNEL`] in the same transaction
//! (`blip2idc models promote|rollback` do the same); consumers LISTEN on the channel and ask for the
//! promoted version of their base model (see `caption::reload`).

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

/// What a promotion was: its kind, who made it and why (recorded in `model_promotions`).
#[derive(Clone, Copy, Debug)]
pub struct Promotion<'a> {
    pub action: PromotionAction,
    pub by: &'a str,
    pub reason: &'a str,
}

/// The kinds of promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotionAction {
    Promote,
    Rollback,
}

impl PromotionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionAction::Promote => "promote",
            PromotionAction::Rollback => "rollback",
        }
    }
}

/// A row of `models list`.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct VersionRow {
    pub version: String,
    pub adapter_uri: Option<String>,
    pub metrics: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub promoted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub load_error: Option<String>,
    /// The promoted version (the latest `promoted_at` of the base model).
    pub promoted: bool,
    /// Consumers that reported this version loaded recently.
    pub consumers: i64,
}

/// A row of the promotion history.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct PromotionRow {
    pub version: String,
    pub action: String,
    pub previous_version: Option<String>,
    pub promoted_by: String,
    pub reason: String,
    pub promoted_at: chrono::DateTime<chrono::Utc>,
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

    /// Promotes `version`, records who and why in `model_promotions` and announces it on
    /// [`PROMOTION_CHANNEL`], atomically; returns the version promoted before it. Promoting a version
    /// again clears the load error a consumer recorded for it.
    pub async fn promote(&self, version: &str, how: &Promotion<'_>) -> anyhow::Result<Option<String>> {
        anyhow::ensure!(!how.reason.trim().is_empty(), "a promotion needs a reason");
        anyhow::ensure!(!how.by.trim().is_empty(), "a promotion needs who made it");
        let mut tx = self.pool().begin().await?;
        let base: Option<(String,)> =
            sqlx::query_as("SELECT base_model FROM model_versions WHERE version = $1 FOR UPDATE")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((base_model,)) = base else { anyhow::bail!("cannot promote {version}: it is not registered") };
        // Promotions of one base model are serialised by this lock (two at once keep their order).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('blip2idc.promote:' || $1))")
            .bind(&base_model)
            .execute(&mut *tx)
            .await?;
        let previous: Option<(String,)> = sqlx::query_as(
            "SELECT version FROM model_versions WHERE promoted_at IS NOT NULL AND base_model = $1
             ORDER BY promoted_at DESC LIMIT 1",
        )
        .bind(&base_model)
        .fetch_optional(&mut *tx)
        .await?;
        let previous = previous.map(|(v,)| v);
        sqlx::query(
            "UPDATE model_versions SET promoted_at = clock_timestamp(), load_error = NULL, load_failed_at = NULL
             WHERE version = $1",
        )
        .bind(version)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO model_promotions (version, base_model, action, previous_version, promoted_by, reason)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(version)
        .bind(&base_model)
        .bind(how.action.as_str())
        .bind(&previous)
        .bind(how.by)
        .bind(how.reason)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(PROMOTION_CHANNEL).bind(version).execute(&mut *tx).await?;
        tx.commit().await.with_context(|| format!("promoting {version}"))?;
        Ok(previous)
    }

    /// The version to roll back to: the most recently promoted version of `base_model` other than
    /// the promoted one (so two rollbacks in a row go back and forth, as `kubectl rollout undo`).
    pub async fn rollback_target(&self, base_model: &str) -> anyhow::Result<Option<String>> {
        let current = self.promoted(base_model).await?.map(|p| p.version);
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT version FROM model_promotions WHERE base_model = $1 AND version IS DISTINCT FROM $2
             ORDER BY id DESC LIMIT 1",
        )
        .bind(base_model)
        .bind(&current)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(v,)| v))
    }

    /// Every version of `base_model`, newest first, with how many consumers seen within `fresh`
    /// have it loaded.
    pub async fn list_versions(&self, base_model: &str, fresh: std::time::Duration) -> anyhow::Result<Vec<VersionRow>> {
        let rows = sqlx::query_as::<_, VersionRow>(
            "SELECT v.version, v.adapter_uri, v.metrics, v.created_at, v.promoted_at, v.load_error,
                    v.promoted_at IS NOT NULL AND v.promoted_at = (SELECT max(promoted_at) FROM model_versions
                                                                   WHERE base_model = $1) AS promoted,
                    (SELECT count(*) FROM consumer_models c WHERE c.version = v.version
                       AND c.seen_at > now() - make_interval(secs => $2)) AS consumers
             FROM model_versions v WHERE v.base_model = $1
             ORDER BY v.created_at DESC, v.version DESC",
        )
        .bind(base_model)
        .bind(fresh.as_secs_f64())
        .fetch_all(self.pool())
        .await
        .context("listing model versions")?;
        Ok(rows)
    }

    /// The promotion history of `base_model`, newest first.
    pub async fn promotion_history(&self, base_model: &str, limit: i64) -> anyhow::Result<Vec<PromotionRow>> {
        sqlx::query_as::<_, PromotionRow>(
            "SELECT version, action, previous_version, promoted_by, reason, promoted_at FROM model_promotions
             WHERE base_model = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(base_model)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .context("reading the promotion history")
    }

    /// Records that `consumer` runs `version` of `base_model` (each poll: `seen_at`; `loaded_at`
    /// changes with the version).
    pub async fn report_loaded(&self, consumer: &str, base_model: &str, version: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO consumer_models (consumer, base_model, version) VALUES ($1, $2, $3)
             ON CONFLICT (consumer) DO UPDATE SET seen_at = now(), base_model = excluded.base_model,
               loaded_at = CASE WHEN consumer_models.version = excluded.version THEN consumer_models.loaded_at
                                ELSE now() END,
               version = excluded.version",
        )
        .bind(consumer)
        .bind(base_model)
        .bind(version)
        .execute(self.pool())
        .await
        .context("reporting the loaded model version")?;
        Ok(())
    }

    /// Removes `consumer`'s report (it stopped).
    pub async fn forget_consumer(&self, consumer: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM consumer_models WHERE consumer = $1").bind(consumer).execute(self.pool()).await?;
        Ok(())
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
