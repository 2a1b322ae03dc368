//! The read side the command line uses: stored captions by event-id prefix.

use super::Store;

/// A stored caption: (event id, model version, caption, the event's attributes).
pub type CaptionRow = (String, String, String, serde_json::Value);

impl Store {
    /// Caption rows whose event id starts with `prefix`.
    pub async fn caption_count(&self, prefix: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM captions WHERE event_id LIKE $1 || '%'")
            .bind(prefix)
            .fetch_one(self.pool())
            .await?)
    }

    /// The newest caption of each event whose id starts with `prefix`, newest first, at most `limit`.
    pub async fn latest_captions(&self, prefix: &str, limit: i64) -> anyhow::Result<Vec<CaptionRow>> {
        Ok(sqlx::query_as(
            "SELECT event_id, model_version, caption, attributes FROM latest_captions
             WHERE event_id LIKE $1 || '%' ORDER BY captioned_at DESC, event_id LIMIT $2",
        )
        .bind(prefix)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
