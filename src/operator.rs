//! The operators' registry commands: `blip2idc models list|promote|rollback`.
//!
//! Promotion goes through [`Store::promote`] as the retraining job's does: `promoted_at`, a row in
//! `model_promotions` (who, why, the version before) and `NOTIFY blip2idc_model_promoted` in one
//! transaction, so running consumers switch within seconds (`caption::reload`), without a restart.

use std::fmt::Write as _;
use std::time::Duration;

use crate::store::{Promotion, PromotionAction, Store, VersionRow};

/// Who runs the command: `--by`, else `$BLIP2IDC_OPERATOR`, else `$USER@host`.
pub fn operator(by: Option<&str>) -> String {
    if let Some(by) = by.filter(|b| !b.trim().is_empty()) {
        return by.trim().to_owned();
    }
    if let Ok(op) = std::env::var("BLIP2IDC_OPERATOR") {
        if !op.trim().is_empty() {
            return op.trim().to_owned();
        }
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    crate::store::breaker::this_consumer(&user)
}

/// How recently a consumer must have reported to count as running a version: three polls, at
/// least a minute.
pub fn fresh_window(reload_poll_interval: Duration) -> Duration {
    (reload_poll_interval * 3).max(Duration::from_secs(60))
}

/// `models promote VERSION`: checks that consumers can load it, promotes it; returns what to print.
pub async fn promote(store: &Store, base_model: &str, version: &str, by: &str, reason: &str) -> anyhow::Result<String> {
    let rows = store.list_versions(base_model, Duration::ZERO).await?;
    let Some(row) = rows.iter().find(|r| r.version == version) else {
        let known: Vec<&str> = rows.iter().take(5).map(|r| r.version.as_str()).collect();
        anyhow::bail!(
            "{version} is not a registered version of {base_model} (newest: {}; see `blip2idc models list`)",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    anyhow::ensure!(
        row.adapter_uri.is_some(),
        "{version} has no adapter in the registry (adapter_uri is empty): consumers could not load it"
    );
    let how = Promotion { action: PromotionAction::Promote, by, reason };
    let previous = store.promote(version, &how).await?;
    Ok(format!("promoted {version} (was {}); consumers switch within seconds", previous.as_deref().unwrap_or("none")))
}

/// `models rollback`: promotes the version promoted before the current one.
pub async fn rollback(store: &Store, base_model: &str, by: &str, reason: &str) -> anyhow::Result<String> {
    let Some(target) = store.rollback_target(base_model).await? else {
        anyhow::bail!("nothing to roll back to: no other version of {base_model} was ever promoted");
    };
    let how = Promotion { action: PromotionAction::Rollback, by, reason };
    let previous = store.promote(&target, &how).await?;
    Ok(format!(
        "rolled back to {target} (was {}); consumers switch within seconds",
        previous.as_deref().unwrap_or("none")
    ))
}

/// A score of a version's holdout metrics (as the retraining job records them), or "-".
fn score(row: &VersionRow, key: &str) -> String {
    row.metrics["holdout"][key].as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// `models list` as a table: versions newest first, then the last promotions.
pub async fn list_text(store: &Store, base_model: &str, fresh: Duration, history: i64) -> anyhow::Result<String> {
    let rows = store.list_versions(base_model, fresh).await?;
    let mut out = String::new();
    writeln!(out, "versions of {base_model} (consumers: reported within {}s)", fresh.as_secs())?;
    let width = rows.iter().map(|r| r.version.len()).max().unwrap_or(7).max(7);
    writeln!(
        out,
        "  {:<width$}  {:<20}  {:>7}  {:>7}  {:>9}  note",
        "VERSION", "CREATED", "CIDEr-D", "BLEU-4", "CONSUMERS"
    )?;
    for r in &rows {
        let mut note = Vec::new();
        if r.promoted {
            note.push("PROMOTED".to_owned());
        }
        if let Some(e) = &r.load_error {
            note.push(format!("failed to load: {}", e.chars().take(80).collect::<String>()));
        }
        writeln!(
            out,
            "{} {:<width$}  {:<20}  {:>7}  {:>7}  {:>9}  {}",
            if r.promoted { '*' } else { ' ' },
            r.version,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            score(r, "cider"),
            score(r, "bleu4"),
            r.consumers,
            note.join("; ")
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "  (none registered)")?;
    }
    let promotions = store.promotion_history(base_model, history).await?;
    if !promotions.is_empty() {
        writeln!(out, "\nlast promotions:")?;
        for p in promotions {
            writeln!(
                out,
                "  {}  {:<8}  {}  (was {})  by {}: {}",
                p.promoted_at.format("%Y-%m-%d %H:%M:%S"),
                p.action,
                p.version,
                p.previous_version.as_deref().unwrap_or("none"),
                p.promoted_by,
                p.reason
            )?;
        }
    }
    Ok(out)
}

/// `models list --json`: `{"base_model", "versions": [...], "promotions": [...]}`.
pub async fn list_json(store: &Store, base_model: &str, fresh: Duration, history: i64) -> anyhow::Result<String> {
    let versions = store.list_versions(base_model, fresh).await?;
    let promotions = store.promotion_history(base_model, history).await?;
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "base_model": base_model, "consumers_fresh_seconds": fresh.as_secs(),
        "versions": versions, "promotions": promotions,
    }))?)
}
