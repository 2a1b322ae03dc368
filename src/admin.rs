//! The admin port: `/healthz` (the process is up), `/startedz` (the model is loaded: the startup
//! probe, which may take minutes for a 3.9 B model), `/readyz` (group joined, database reachable,
//! model loaded, events progressing, dead-letter breaker closed) and `/metrics` (Prometheus text
//! exposition).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::store::Store;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    store: Store,
    prometheus: PrometheusHandle,
}

/// Binds the admin listener now (so a port clash fails start-up) and serves it until `shutdown`.
pub async fn spawn(
    listen: SocketAddr,
    health: Arc<Health>,
    store: Store,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {listen}: cannot bind: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/startedz", get(startedz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { health, store, prometheus });
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!("admin server failed: {e}");
        }
    });
    Ok((addr, task))
}

async fn startedz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.model_loaded.load(Ordering::Relaxed) {
        (StatusCode::OK, "model loaded\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the model\n")
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let group = s.health.group_joined.load(Ordering::Relaxed);
    let model = s.health.model_loaded.load(Ordering::Relaxed);
    let database = s.store.ping(Duration::from_secs(1)).await;
    let progressing = !s.health.stalled.load(Ordering::Relaxed);
    let breaker_closed = !s.health.breaker_tripped.load(Ordering::Relaxed);
    let ready = group && model && database && progressing && breaker_closed;
    let body = serde_json::json!({
        "ready": ready,
        "checks": {
            "kafka_group_joined": group,
            "database_reachable": database,
            "model_loaded": model,
            "progressing": progressing,
            "breaker_closed": breaker_closed,
        }
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.prometheus.run_upkeep();
    ([("content-type", "text/plain; version=0.0.4")], s.prometheus.render())
}
