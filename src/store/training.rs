//! The retraining job's tables: `training_runs` (one row per run, under an advisory lock) and
//! `labels` (human-verified captions, their train/holdout split).

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Row};

use super::Store;

/// Advisory-lock key of the retraining job ("b1idctrn").
const LOCK_KEY: i64 = 0x6231_6964_6374_726e;

/// A label row.
#[derive(Clone, Debug)]
pub struct Label {
    pub id: i64,
    pub original: String,
    pub modified: String,
    pub caption: String,
    pub category: Option<String>,
    pub split: Option<String>,
}

/// A held advisory lock: at most one retraining job at a time. Released by [`RunLock::release`] (or
/// when its connection closes).
pub struct RunLock(PoolConnection<Postgres>);

impl RunLock {
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *self.0).await;
    }
}

/// What a successful run records.
#[derive(Debug)]
pub struct RunResult<'a> {
    pub parent_version: Option<&'a str>,
    pub candidate_version: &'a str,
    pub promoted: bool,
    pub decision: &'a str,
    pub last_label_id: i64,
    pub n_new_labels: i32,
    pub n_train: i32,
    pub n_holdout: i32,
    pub losses: serde_json::Value,
    pub metrics: serde_json::Value,
    pub durations: serde_json::Value,
}

impl Store {
    /// Takes the retraining lock; `None` when another job holds it.
    pub async fn try_lock_training(&self) -> anyhow::Result<Option<RunLock>> {
        let mut conn = self.pool().acquire().await.context("connecting to PostgreSQL")?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *conn).await?;
        Ok(locked.then_some(RunLock(conn)))
    }

    /// Records a started run; returns its id.
    pub async fn start_run(&self, seed: i64, base_model: &str, config: serde_json::Value) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO training_runs (status, seed, base_model, config) VALUES ('running', $1, $2, $3) RETURNING id",
        )
        .bind(seed)
        .bind(base_model)
        .bind(config)
        .fetch_one(self.pool())
        .await?)
    }

    pub async fn fail_run(&self, run_id: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE training_runs SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1")
            .bind(run_id)
            .bind(error)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn skip_run(&self, run_id: i64, decision: &str, n_new_labels: i32) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE training_runs SET status = 'skipped', finished_at = now(), decision = $2, n_new_labels = $3 WHERE id = $1",
        )
        .bind(run_id)
        .bind(decision)
        .bind(n_new_labels)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn succeed_run(&self, run_id: i64, r: &RunResult<'_>) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE training_runs SET status = 'succeeded', finished_at = now(), parent_version = $2,
                 candidate_version = $3, promoted = $4, decision = $5, last_label_id = $6, n_new_labels = $7,
                 n_train = $8, n_holdout = $9, losses = $10, metrics = $11, durations = $12
             WHERE id = $1",
        )
        .bind(run_id)
        .bind(r.parent_version)
        .bind(r.candidate_version)
        .bind(r.promoted)
        .bind(r.decision)
        .bind(r.last_label_id)
        .bind(r.n_new_labels)
        .bind(r.n_train)
        .bind(r.n_holdout)
        .bind(&r.losses)
        .bind(&r.metrics)
        .bind(&r.durations)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The last label id the latest successful run saw (0 before the first).
    pub async fn last_trained_label(&self) -> anyhow::Result<i64> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(last_label_id) FROM training_runs WHERE status = 'succeeded'")
                .fetch_one(self.pool())
                .await?;
        Ok(last.unwrap_or(0))
    }

    /// (the highest label id, how many labels are newer than `after`).
    pub async fn label_counts(&self, after: i64) -> anyhow::Result<(i64, i64)> {
        let max_id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM labels").fetch_one(self.pool()).await?;
        let n_new: i64 =
            sqlx::query_scalar("SELECT count(*) FROM labels WHERE id > $1").bind(after).fetch_one(self.pool()).await?;
        Ok((max_id.unwrap_or(0), n_new))
    }

    /// The labels a run trains and evaluates on: every holdout label, and the train labels newer than
    /// `after` (all of them with `include_previous`), up to `up_to`.
    pub async fn labels_for_run(&self, after: i64, include_previous: bool, up_to: i64) -> anyhow::Result<Vec<Label>> {
        let rows = sqlx::query(
            "SELECT id, original_uri, modified_uri, caption, category, split FROM labels
             WHERE (split = 'holdout' OR (split = 'train' AND (id > $1 OR $2))) AND id <= $3 ORDER BY id",
        )
        .bind(after)
        .bind(include_previous)
        .bind(up_to)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| Label {
                id: r.get("id"),
                original: r.get("original_uri"),
                modified: r.get("modified_uri"),
                caption: r.get("caption"),
                category: r.get("category"),
                split: r.get("split"),
            })
            .collect())
    }

    /// Gives labels without a split one, in one transaction: a pair (its two URIs) already split keeps
    /// its split for every label; the other pairs, oldest first, go where `choose(pairs, holdout_pairs)`
    /// says (`"train"` or `"holdout"`, one per pair; `holdout_pairs` counts the pairs already held out).
    pub async fn assign_splits(
        &self,
        choose: impl FnOnce(&[(String, String)], i64) -> Vec<&'static str>,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE labels l SET split = s.split FROM
               (SELECT DISTINCT ON (original_uri, modified_uri) original_uri, modified_uri, split FROM labels
                WHERE split IS NOT NULL ORDER BY original_uri, modified_uri, id) s
             WHERE l.split IS NULL AND l.original_uri = s.original_uri AND l.modified_uri = s.modified_uri",
        )
        .execute(&mut *tx)
        .await?;
        let pairs: Vec<(String, String)> = sqlx::query_as(
            "SELECT original_uri, modified_uri FROM labels WHERE split IS NULL
                 GROUP BY original_uri, modified_uri ORDER BY min(id)",
        )
        .fetch_all(&mut *tx)
        .await?;
        let n_holdout: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT (original_uri, modified_uri)) FROM labels WHERE split = 'holdout'",
        )
        .fetch_one(&mut *tx)
        .await?;
        let splits = choose(&pairs, n_holdout);
        anyhow::ensure!(splits.len() == pairs.len(), "one split per pair");
        let (originals, modifieds): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        sqlx::query(
            "UPDATE labels l SET split = s.split
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS s(original_uri, modified_uri, split)
             WHERE l.original_uri = s.original_uri AND l.modified_uri = s.modified_uri AND l.split IS NULL",
        )
        .bind(&originals)
        .bind(&modifieds)
        .bind(&splits)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts a label.
    pub async fn insert_label(
        &self,
        (original, modified): (&str, &str),
        caption: &str,
        category: Option<&str>,
        labeled_by: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO labels (original_uri, modified_uri, caption, category, labeled_by) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(original)
        .bind(modified)
        .bind(caption)
        .bind(category)
        .bind(labeled_by)
        .execute(self.pool())
        .await
        .context("inserting a label")?;
        Ok(())
    }
}
