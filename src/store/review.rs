//! What the review app (`src/review`) reads and writes: caption search with keyset pagination, a
//! pair with its captions and labels, the review queue, decisions as `labels` rows (one per pair
//! until a training run uses it), sessions, and the audit log of every write.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, QueryBuilder};

use super::Store;

/// A caption search (the review app's search form, validated).
#[derive(Clone, Debug, Default)]
pub struct CaptionSearch {
    /// Words as `websearch_to_tsquery('english', ...)` reads them (as `search_captions` does).
    pub q: Option<String>,
    pub source: Option<String>,
    pub version: Option<String>,
    pub changed: Option<bool>,
    pub action: Option<String>,
    /// Captioned on or after this day (UTC).
    pub from: Option<NaiveDate>,
    /// Captioned on or before this day (UTC).
    pub to: Option<NaiveDate>,
    pub sort: SearchSort,
    /// Start after this row's sort key.
    pub after: Option<SearchKey>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchSort {
    #[default]
    Newest,
    Oldest,
    /// By `ts_rank`, then newest (needs `q`).
    Relevance,
}

/// The sort key of a row: where the next page starts.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SearchKey {
    pub t: DateTime<Utc>,
    pub e: String,
    pub m: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<f32>,
}

/// One search result.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SearchHit {
    pub event_id: String,
    pub model_version: String,
    pub caption: String,
    pub created_at: DateTime<Utc>,
    pub changed: Option<bool>,
    pub actions: Vec<String>,
    pub model_skipped: bool,
    pub source_host: Option<String>,
    pub rank: f32,
}

impl SearchHit {
    /// The key after this row in `sort`.
    pub fn key(&self, sort: SearchSort) -> SearchKey {
        SearchKey {
            t: self.created_at,
            e: self.event_id.clone(),
            m: self.model_version.clone(),
            r: (sort == SearchSort::Relevance).then_some(self.rank),
        }
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PairRow {
    pub event_id: String,
    pub original_uri: String,
    pub republished_uri: String,
    pub source_url: Option<String>,
    pub source_host: Option<String>,
    pub observed_at: Option<DateTime<Utc>>,
    pub attributes: serde_json::Value,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub first_seen_at: DateTime<Utc>,
}

/// A caption of a pair, with its model version's holdout scores (`metrics -> 'holdout'`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PairCaption {
    pub model_version: String,
    pub caption: String,
    pub created_at: DateTime<Utc>,
    pub changed: Option<bool>,
    pub regions: Option<serde_json::Value>,
    pub actions: Vec<String>,
    pub model_skipped: bool,
    pub inference_seconds: f64,
    pub holdout: Option<serde_json::Value>,
    pub promoted_at: Option<DateTime<Utc>>,
}

/// A label as the app shows it and the audit log records it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct LabelRow {
    pub id: i64,
    pub event_id: Option<String>,
    pub caption: String,
    pub category: Option<String>,
    /// `accepted` / `corrected` (None: inserted outside the app).
    pub decision: Option<String>,
    pub source_model_version: Option<String>,
    pub labeled_by: String,
    pub split: Option<String>,
    pub created_at: DateTime<Utc>,
}

const LABEL: &str = "id, event_id, caption, category, decision, source_model_version, labeled_by, split, created_at";

/// A review decision on a pair's caption.
pub struct Decision<'a> {
    pub event_id: &'a str,
    /// The model version whose caption was judged.
    pub model_version: &'a str,
    /// `None`: accepted as it is; `Some(text)`: corrected.
    pub correction: Option<&'a str>,
    pub category: Option<&'a str>,
    pub user: &'a str,
    pub client: &'a str,
}

/// What became of a decision or an undo.
#[derive(Debug)]
pub enum Decided {
    /// Written (the label as it is now; for an undo, as it was).
    Done(LabelRow),
    /// No such pair, caption or decision.
    Missing(String),
    /// A training run already used the label (its split is set): it is final.
    Final(LabelRow),
    /// Someone else's decision (only they or an admin may undo it).
    NotYours(LabelRow),
}

/// One audited action.
pub struct AuditEntry<'a> {
    pub user: &'a str,
    pub action: &'a str,
    pub event_id: Option<&'a str>,
    pub label_id: Option<i64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub client: &'a str,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub username: String,
    pub action: String,
    pub event_id: Option<String>,
    pub label_id: Option<i64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub client: Option<String>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TrainingRunRow {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub status: String,
    pub candidate_version: Option<String>,
    pub promoted: bool,
    pub decision: Option<String>,
    pub n_new_labels: Option<i32>,
    pub n_train: Option<i32>,
    pub n_holdout: Option<i32>,
}

/// Which image of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Original,
    Republished,
}

async fn audit_in<'e, E: sqlx::PgExecutor<'e>>(db: E, e: &AuditEntry<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO review_audit (username, action, event_id, label_id, before, after, client)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.user)
    .bind(e.action)
    .bind(e.event_id)
    .bind(e.label_id)
    .bind(&e.before)
    .bind(&e.after)
    .bind(e.client)
    .execute(db)
    .await?;
    Ok(())
}

fn state(l: &LabelRow) -> serde_json::Value {
    serde_json::to_value(l).expect("a label serializes")
}

impl Store {
    /// One page of `s` (`limit` rows, plus one more when there is a next page).
    pub async fn search_captions_page(&self, s: &CaptionSearch, limit: usize) -> anyhow::Result<Vec<SearchHit>> {
        let mut b: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT c.event_id, c.model_version, c.caption, c.created_at, c.changed, c.actions, c.model_skipped, \
             p.source_host, ",
        );
        let rank = |b: &mut QueryBuilder<Postgres>, q: &str| {
            b.push("ts_rank(c.caption_tsv, websearch_to_tsquery('english', ").push_bind(q.to_owned()).push("))");
        };
        match &s.q {
            Some(q) => rank(&mut b, q),
            None => {
                b.push("0::real");
            }
        }
        b.push(" AS rank FROM captions c JOIN image_pairs p USING (event_id) WHERE TRUE");
        if let Some(q) = &s.q {
            b.push(" AND c.caption_tsv @@ websearch_to_tsquery('english', ").push_bind(q.clone()).push(")");
        }
        if let Some(v) = &s.source {
            b.push(" AND p.source_host = ").push_bind(v.clone());
        }
        if let Some(v) = &s.version {
            b.push(" AND c.model_version = ").push_bind(v.clone());
        }
        if let Some(c) = s.changed {
            b.push(" AND c.changed = ").push_bind(c);
        }
        if let Some(a) = &s.action {
            b.push(" AND c.actions @> ARRAY[").push_bind(a.clone()).push("]::text[]");
        }
        if let Some(d) = s.from {
            b.push(" AND c.created_at >= ").push_bind(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
        }
        if let Some(d) = s.to {
            let end = (d + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
            b.push(" AND c.created_at < ").push_bind(end);
        }
        if let Some(k) = &s.after {
            let key = |b: &mut QueryBuilder<Postgres>| {
                b.push_bind(k.t).push(", ").push_bind(k.e.clone()).push(", ").push_bind(k.m.clone()).push(")");
            };
            match s.sort {
                SearchSort::Newest => {
                    b.push(" AND (c.created_at, c.event_id, c.model_version) < (");
                    key(&mut b);
                }
                SearchSort::Oldest => {
                    b.push(" AND (c.created_at, c.event_id, c.model_version) > (");
                    key(&mut b);
                }
                SearchSort::Relevance => {
                    b.push(" AND (");
                    rank(&mut b, s.q.as_deref().unwrap_or(""));
                    b.push(", c.created_at, c.event_id, c.model_version) < (").push_bind(k.r.unwrap_or(0.0)).push(", ");
                    key(&mut b);
                }
            }
        }
        b.push(match s.sort {
            SearchSort::Newest => " ORDER BY c.created_at DESC, c.event_id DESC, c.model_version DESC",
            SearchSort::Oldest => " ORDER BY c.created_at, c.event_id, c.model_version",
            SearchSort::Relevance => " ORDER BY rank DESC, c.created_at DESC, c.event_id DESC, c.model_version DESC",
        });
        b.push(" LIMIT ").push_bind(limit as i64 + 1);
        b.build_query_as::<SearchHit>().fetch_all(self.pool()).await.context("searching captions")
    }

    /// The same page by OFFSET (the reference the keyset pagination is measured against).
    pub async fn search_captions_offset(&self, offset: i64, limit: i64) -> anyhow::Result<Vec<SearchHit>> {
        Ok(sqlx::query_as(
            "SELECT c.event_id, c.model_version, c.caption, c.created_at, c.changed, c.actions, c.model_skipped,
                    p.source_host, 0::real AS rank
             FROM captions c JOIN image_pairs p USING (event_id)
             ORDER BY c.created_at DESC, c.event_id DESC, c.model_version DESC OFFSET $1 LIMIT $2",
        )
        .bind(offset)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Model version names, newest first (the search form's choices).
    pub async fn version_names(&self, limit: i64) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT version FROM model_versions ORDER BY created_at DESC LIMIT $1")
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    pub async fn pair(&self, event_id: &str) -> anyhow::Result<Option<PairRow>> {
        Ok(sqlx::query_as(
            "SELECT event_id, original_uri, republished_uri, source_url, source_host, observed_at, attributes,
                    kafka_topic, kafka_partition, kafka_offset, first_seen_at
             FROM image_pairs WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The URI of one image of a pair.
    pub async fn pair_uri(&self, event_id: &str, side: Side) -> anyhow::Result<Option<String>> {
        let sql = match side {
            Side::Original => "SELECT original_uri FROM image_pairs WHERE event_id = $1",
            Side::Republished => "SELECT republished_uri FROM image_pairs WHERE event_id = $1",
        };
        Ok(sqlx::query_scalar(sql).bind(event_id).fetch_optional(self.pool()).await?)
    }

    /// Every caption of a pair, newest first, with its version's holdout scores.
    pub async fn pair_captions(&self, event_id: &str) -> anyhow::Result<Vec<PairCaption>> {
        Ok(sqlx::query_as(
            "SELECT c.model_version, c.caption, c.created_at, c.changed, c.regions, c.actions, c.model_skipped,
                    c.inference_seconds, v.metrics -> 'holdout' AS holdout, v.promoted_at
             FROM captions c JOIN model_versions v ON v.version = c.model_version
             WHERE c.event_id = $1 ORDER BY c.created_at DESC, c.model_version DESC",
        )
        .bind(event_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The labels of a pair, newest first.
    pub async fn pair_labels(&self, event_id: &str) -> anyhow::Result<Vec<LabelRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LABEL} FROM labels WHERE event_id = $1 ORDER BY id DESC"
        )))
        .bind(event_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The next pair to review: newest first, its latest caption made by the model (not skipped), no
    /// label yet; from `source` only; after `skip` (a pair passed over) when given.
    pub async fn next_unreviewed(&self, source: Option<&str>, skip: Option<&str>) -> anyhow::Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT c.event_id FROM captions c JOIN image_pairs p USING (event_id)
             WHERE NOT c.model_skipped
               AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.event_id = c.event_id)
               AND NOT EXISTS (SELECT 1 FROM captions n WHERE n.event_id = c.event_id
                               AND (n.created_at, n.model_version) > (c.created_at, c.model_version))
               AND ($1::text IS NULL OR p.source_host = $1)
               AND ($2::text IS NULL OR (c.created_at, c.event_id) <
                    (coalesce((SELECT max(created_at) FROM captions WHERE event_id = $2), 'infinity'), $2))
             ORDER BY c.created_at DESC, c.event_id DESC LIMIT 1",
        )
        .bind(source)
        .bind(skip)
        .fetch_optional(self.pool())
        .await?)
    }

    /// `user`'s latest decisions, newest first.
    pub async fn recent_decisions(&self, user: &str, limit: i64) -> anyhow::Result<Vec<LabelRow>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LABEL} FROM labels WHERE labeled_by = $1 AND decision IS NOT NULL
             ORDER BY created_at DESC, id DESC LIMIT $2"
        )))
        .bind(user)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// How many decisions `user` made today (UTC).
    pub async fn decisions_today(&self, user: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM labels WHERE labeled_by = $1 AND decision IS NOT NULL
               AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        )
        .bind(user)
        .fetch_one(self.pool())
        .await?)
    }

    /// Writes a decision as the pair's label (replacing its earlier decision unless a training run
    /// used that one), audited, in one transaction.
    pub async fn decide(&self, d: &Decision<'_>) -> anyhow::Result<Decided> {
        let mut tx = self.pool().begin().await?;
        let judged: Option<(String, String, String)> = sqlx::query_as(
            "SELECT c.caption, p.original_uri, p.republished_uri FROM captions c JOIN image_pairs p USING (event_id)
             WHERE c.event_id = $1 AND c.model_version = $2",
        )
        .bind(d.event_id)
        .bind(d.model_version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((judged, original, republished)) = judged else {
            return Ok(Decided::Missing(format!("pair {:?} has no caption by {:?}", d.event_id, d.model_version)));
        };
        let before: Option<LabelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LABEL} FROM labels WHERE event_id = $1 AND decision IS NOT NULL FOR UPDATE"
        )))
        .bind(d.event_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(b) = before.as_ref().filter(|b| b.split.is_some()) {
            return Ok(Decided::Final(b.clone()));
        }
        let (decision, caption) = match d.correction {
            None => ("accepted", judged.as_str()),
            Some(c) => ("corrected", c),
        };
        let query = match &before {
            Some(b) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE labels SET caption = $2, category = $3, decision = $4, source_model_version = $5,
                     source_caption = $6, labeled_by = $7, original_uri = $8, modified_uri = $9, created_at = now()
                 WHERE id = $1 RETURNING {LABEL}"
            )))
            .bind(b.id),
            None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO labels (event_id, caption, category, decision, source_model_version, source_caption,
                                     labeled_by, original_uri, modified_uri)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {LABEL}"
            )))
            .bind(d.event_id),
        };
        let after: LabelRow = query
            .bind(caption)
            .bind(d.category)
            .bind(decision)
            .bind(d.model_version)
            .bind(&judged)
            .bind(d.user)
            .bind(&original)
            .bind(&republished)
            .fetch_one(&mut *tx)
            .await?;
        let entry = AuditEntry {
            user: d.user,
            action: decision,
            event_id: Some(d.event_id),
            label_id: Some(after.id),
            before: before.as_ref().map(state),
            after: Some(state(&after)),
            client: d.client,
        };
        audit_in(&mut *tx, &entry).await?;
        tx.commit().await.context("committing the decision")?;
        Ok(Decided::Done(after))
    }

    /// Removes decision `id` (`user`'s own, or anyone's for an admin) unless a training run used it;
    /// audited with the row as it was.
    pub async fn undo_decision(&self, id: i64, user: &str, admin: bool, client: &str) -> anyhow::Result<Decided> {
        let mut tx = self.pool().begin().await?;
        let before: Option<LabelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LABEL} FROM labels WHERE id = $1 AND decision IS NOT NULL FOR UPDATE"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = before else {
            return Ok(Decided::Missing(format!("no review decision #{id}")));
        };
        if before.labeled_by != user && !admin {
            return Ok(Decided::NotYours(before));
        }
        if before.split.is_some() {
            return Ok(Decided::Final(before));
        }
        sqlx::query("DELETE FROM labels WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let entry = AuditEntry {
            user,
            action: "undo",
            event_id: before.event_id.as_deref(),
            label_id: Some(id),
            before: Some(state(&before)),
            after: None,
            client,
        };
        audit_in(&mut *tx, &entry).await?;
        tx.commit().await.context("committing the undo")?;
        Ok(Decided::Done(before))
    }

    /// Records an audited action (sign-ins and sign-outs; decisions audit themselves).
    pub async fn audit(&self, e: &AuditEntry<'_>) -> anyhow::Result<()> {
        audit_in(self.pool(), e).await.context("writing the audit log")
    }

    /// The audit log, newest first: 100 rows before `before` (an id), of `user` only when given.
    pub async fn audit_log(&self, user: Option<&str>, before: Option<i64>) -> anyhow::Result<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT id, at, username, action, event_id, label_id, before, after, client FROM review_audit
             WHERE ($1::text IS NULL OR username = $1) AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC LIMIT 100",
        )
        .bind(user)
        .bind(before)
        .fetch_all(self.pool())
        .await?)
    }

    /// Starts a session: the token's SHA-256, its user and CSRF token, for `ttl` (expired sessions
    /// are removed on the way).
    pub async fn create_session(
        &self,
        token_sha256: &[u8],
        user: &str,
        csrf: &str,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM review_sessions WHERE expires_at < now()").execute(self.pool()).await?;
        sqlx::query(
            "INSERT INTO review_sessions (token_sha256, username, csrf_token, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        )
        .bind(token_sha256)
        .bind(user)
        .bind(csrf)
        .bind(ttl.as_secs_f64())
        .execute(self.pool())
        .await
        .context("creating the session")?;
        Ok(())
    }

    /// The live session of a token's SHA-256: (user, CSRF token).
    pub async fn session(&self, token_sha256: &[u8]) -> anyhow::Result<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT username, csrf_token FROM review_sessions WHERE token_sha256 = $1 AND expires_at > now()",
        )
        .bind(token_sha256)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn end_session(&self, token_sha256: &[u8]) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM review_sessions WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The latest training runs of `base_model`, newest first.
    pub async fn training_runs(&self, base_model: &str, limit: i64) -> anyhow::Result<Vec<TrainingRunRow>> {
        Ok(sqlx::query_as(
            "SELECT id, started_at, status, candidate_version, promoted, decision, n_new_labels, n_train, n_holdout
             FROM training_runs WHERE base_model = $1 ORDER BY started_at DESC LIMIT $2",
        )
        .bind(base_model)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
