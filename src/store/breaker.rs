//! The dead-letter breaker's state in PostgreSQL (`breaker_trips`), shared by every replica and
//! restart of a consumer group: one row per tripped group, removed by `blip2idc breaker reset` or
//! when `dlq.breaker_cooldown` has passed.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::Store;

/// A recorded trip (a `breaker_trips` row).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Trip {
    pub tripped_at: DateTime<Utc>,
    pub reason: String,
    /// The client that tripped it (`kafka.client_id` and host name).
    pub tripped_by: String,
}

impl Store {
    /// Records that `group`'s breaker tripped (a later trip replaces the record).
    pub async fn record_trip(&self, group: &str, reason: &str, by: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO breaker_trips (group_id, reason, tripped_by) VALUES ($1, $2, $3)
             ON CONFLICT (group_id) DO UPDATE SET tripped_at = now(), reason = $2, tripped_by = $3",
        )
        .bind(group)
        .bind(reason)
        .bind(by)
        .execute(self.pool())
        .await
        .with_context(|| format!("recording the breaker trip of group {group}"))?;
        Ok(())
    }

    /// The trip recorded for `group`, if any.
    pub async fn trip_of(&self, group: &str) -> anyhow::Result<Option<Trip>> {
        sqlx::query_as("SELECT tripped_at, reason, tripped_by FROM breaker_trips WHERE group_id = $1")
            .bind(group)
            .fetch_optional(self.pool())
            .await
            .context("reading the breaker state")
    }

    /// Resets `group`'s breaker; returns the trip that was removed.
    pub async fn reset_trip(&self, group: &str) -> anyhow::Result<Option<Trip>> {
        let row: Option<(DateTime<Utc>, String, String)> =
            sqlx::query_as("DELETE FROM breaker_trips WHERE group_id = $1 RETURNING tripped_at, reason, tripped_by")
                .bind(group)
                .fetch_optional(self.pool())
                .await
                .context("resetting the breaker")?;
        Ok(row.map(|(tripped_at, reason, tripped_by)| Trip { tripped_at, reason, tripped_by }))
    }
}

/// Names this consumer in a trip record: `kafka.client_id@host`.
pub fn this_consumer(client_id: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{client_id}@{host}")
}
