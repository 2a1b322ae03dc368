//! Watching the running pipeline: progress and stall detection (the gauges and `/readyz`), and the
//! dead-letter breaker's record in PostgreSQL (holding while tripped, following other replicas'
//! trips, recording this one's).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::outcomes::Outcomes;
use super::summary::Fatal;
use crate::budget::ByteBudget;
use crate::config::Config;
use crate::health::Health;
use crate::retry::{Backoff, Retry};
use crate::store::Store;

/// Every 500 ms until `stop`: the in-flight gauges, and whether events wait while none finishes for
/// `stall_timeout` (then `/readyz` fails).
pub(super) async fn watch_progress(
    permits: Arc<Semaphore>,
    total: usize,
    budget: Arc<ByteBudget>,
    outcomes: Arc<Outcomes>,
    health: Arc<Health>,
    stall_timeout: Duration,
    stop: CancellationToken,
) {
    loop {
        let in_flight = total - permits.available_permits();
        metrics::gauge!(crate::metrics::IN_FLIGHT).set(in_flight as f64);
        metrics::gauge!(crate::metrics::IN_FLIGHT_BYTES).set(budget.in_use() as f64);
        // Idle is not stalled: only time with events waiting counts.
        if in_flight == 0 {
            outcomes.progressed();
        }
        let waiting = outcomes.since_progress();
        let stalled = waiting >= stall_timeout;
        metrics::gauge!(crate::metrics::SECONDS_SINCE_PROGRESS).set(waiting.as_secs_f64());
        metrics::gauge!(crate::metrics::STALLED).set(if stalled { 1.0 } else { 0.0 });
        if health.stalled.swap(stalled, std::sync::atomic::Ordering::Relaxed) != stalled {
            if stalled {
                tracing::warn!(in_flight, ?waiting, "no event finished for pipeline.stall_timeout: unready");
            } else {
                tracing::info!("events are finishing again: ready");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Stops the pipeline (fatal) when another replica records a trip of the group's breaker.
pub(super) async fn watch_breaker(store: Store, group: String, outcomes: Arc<Outcomes>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(BREAKER_POLL) => {}
            _ = stop.cancelled() => return,
        }
        if let Ok(Some(trip)) = store.trip_of(&group).await {
            outcomes.fatal(Fatal::BreakerHeld { reason: trip.reason, tripped_by: trip.tripped_by });
            return;
        }
    }
}

/// Records this consumer's trip of the group's breaker, so that restarts and the other replicas hold
/// too ([`hold_while_tripped`]); a few tries, then an error in the log.
pub(super) async fn record_trip(cfg: &Config, store: &Store, reason: &str) {
    let by = crate::store::breaker::this_consumer(&cfg.kafka.client_id);
    let retry = Retry::new("record_trip", Backoff::new(Duration::from_millis(500), Duration::from_secs(4))).at_most(5);
    if let Err(e) = retry.run(|| store.record_trip(&cfg.kafka.group_id, reason, &by), |_| true).await {
        tracing::error!("could not record the breaker trip: {:#}", e.into_last());
    }
}

/// How often a running consumer looks for a trip recorded by another replica, and a held one for a reset.
const BREAKER_POLL: Duration = Duration::from_secs(2);

/// Waits while the group's breaker is tripped (recorded in PostgreSQL), unready and consuming nothing,
/// until `blip2idc breaker reset` removes the record or `dlq.breaker_cooldown` has passed. Returns
/// false when shutdown was asked meanwhile. While the database cannot answer, it waits too: the
/// breaker must not be skipped.
pub(super) async fn hold_while_tripped(
    cfg: &Config,
    store: &Store,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    use std::sync::atomic::Ordering;
    let group = &cfg.kafka.group_id;
    let cooldown = cfg.dlq.breaker_cooldown;
    let mut announced = false;
    loop {
        match store.trip_of(group).await {
            Ok(None) => {
                if announced {
                    tracing::info!(group, "the dead-letter breaker was reset: consuming");
                }
                health.breaker_tripped.store(false, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::BREAKER_TRIPPED).set(0.0);
                return true;
            }
            Ok(Some(trip)) => {
                let age = (chrono::Utc::now() - trip.tripped_at).to_std().unwrap_or_default();
                if !cooldown.is_zero() && age >= cooldown {
                    tracing::warn!(
                        group,
                        ?cooldown,
                        "dlq.breaker_cooldown passed since the trip: resetting the breaker"
                    );
                    if let Err(e) = store.reset_trip(group).await {
                        tracing::warn!("resetting the breaker after its cooldown: {e:#}");
                    }
                    continue;
                }
                health.breaker_tripped.store(true, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::BREAKER_TRIPPED).set(1.0);
                if !announced {
                    announced = true;
                    tracing::error!(
                        group, tripped_at = %trip.tripped_at, tripped_by = %trip.tripped_by,
                        "the dead-letter breaker of this group is tripped ({}): not consuming; fix the cause, then \
                         run `blip2idc breaker reset`{}",
                        trip.reason,
                        if cooldown.is_zero() { String::new() } else { format!(" (or wait for dlq.breaker_cooldown = {cooldown:?})") }
                    );
                }
            }
            Err(e) => tracing::warn!("cannot read the breaker state (waiting for the database): {e:#}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(BREAKER_POLL) => {}
        }
    }
}
