//! `blip2idc review`: the analysts' web app, served by axum on `review.listen`.
//!
//! Server-rendered HTML (maud: templates are Rust expressions checked by the compiler, escaped by
//! default, with no template files to ship or load at run time) and one small script for keyboard
//! shortcuts and the image comparison. Pages: [`search`] (full-text and filters, keyset pagination),
//! [`pair`] (both images, changed regions, every model's caption), [`queue`] (accept or correct
//! captions: each decision is a row of `labels`, which `blip2idc retrain` trains on; undo),
//! [`models`] (the registry, promotions, training runs and an SVG plot), [`audit`] (admins).
//! [`auth`]: who is asking (sessions, API tokens, a trusted proxy), roles, CSRF; [`login`]: signing
//! in and out, rate limits. [`images`]: originals and thumbnails streamed from S3 through the app.
//! Every query is in `store::review`.

pub mod audit;
pub mod auth;
pub mod images;
pub mod layout;
pub mod login;
pub mod models;
pub mod pair;
pub mod queue;
pub mod search;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fetch::Fetcher;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub fetcher: Arc<Fetcher>,
    pub thumbs: Arc<images::ThumbCache>,
    pub limiter: Arc<login::LoginLimiter>,
    pub prometheus: metrics_exporter_prometheus::PrometheusHandle,
}

/// What a handler can fail with; each becomes a page (or a redirect to the sign-in form).
#[derive(Debug)]
pub enum AppError {
    /// Not signed in: GETs go to the sign-in form (then back), other requests get 401.
    SignIn {
        next: String,
    },
    Unauthorized(String),
    Forbidden(String),
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
    Unsupported(String),
    TooManyAttempts(Duration),
    BadGateway(String),
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(e.into())
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        AppError::Internal(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            AppError::SignIn { next } => {
                let to = format!("/login?next={}", layout::pct(&next));
                return Redirect::to(&to).into_response();
            }
            AppError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            AppError::Conflict(m) => (StatusCode::CONFLICT, m),
            AppError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            AppError::Unsupported(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            AppError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m),
            AppError::TooManyAttempts(wait) => {
                let secs = wait.as_secs().max(1);
                let body = layout::bare(
                    "Too many attempts",
                    maud::html! { p.error role="alert" { "Too many failed sign-ins. Try again in " (secs) " s." } },
                );
                let mut r = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return r;
            }
            AppError::Internal(e) => {
                tracing::error!("review app: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error (logged)".to_owned())
            }
        };
        let title = status.canonical_reason().unwrap_or("Error");
        (
            status,
            layout::bare(title, maud::html! { h1 { (title) } p.error role="alert" { (msg) } a href="/" { "Back" } }),
        )
            .into_response()
    }
}

/// The app's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/search") }))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/search", get(search::page))
        .route("/pairs/{event_id}", get(pair::page))
        .route("/pairs/{event_id}/label", post(queue::decide))
        .route("/review", get(queue::page))
        .route("/labels/{id}/undo", post(queue::undo))
        .route("/models", get(models::page))
        .route("/audit", get(audit::page))
        .route("/img/{event_id}/{which}", get(images::full))
        .route("/thumb/{event_id}/{which}", get(images::thumbnail))
        .route("/static/app.css", get(layout::css))
        .route("/static/app.js", get(layout::js))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_page))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(timed))
        .with_state(state)
}

async fn metrics_page(State(s): State<AppState>, who: auth::Authed) -> Result<String, AppError> {
    who.require(crate::config::Role::Admin)?;
    Ok(s.prometheus.render())
}

/// Records each response's time by page (the path's first segment; others as "other").
async fn timed(req: Request, next: Next) -> Response {
    let started = Instant::now();
    const PAGES: [&str; 9] = ["search", "pairs", "review", "models", "audit", "img", "thumb", "login", "labels"];
    let segment = req.uri().path().split('/').nth(1).unwrap_or("");
    let page = PAGES.iter().copied().find(|p| *p == segment).unwrap_or("other");
    let r = next.run(req).await;
    metrics::histogram!(crate::metrics::REVIEW_REQUEST_SECONDS, "page" => page).record(started.elapsed().as_secs_f64());
    r
}

/// Headers on every response: a strict content security policy (scripts and styles from this app
/// only, no framing), no MIME sniffing, no referrer leaving the app; pages are never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Builds the state: the database, the S3 reader (the service's allow-list; `review.max_image_bytes`).
pub async fn state(cfg: Config) -> anyhow::Result<AppState> {
    let store = Store::connect_lazy(&cfg.database)?;
    let mut s3 = cfg.s3.clone();
    s3.max_object_bytes = s3.max_object_bytes.min(cfg.review.max_image_bytes);
    // A page waits for an image a few seconds at most; the pipeline's long retry budget is for events.
    s3.retry_timeout = s3.request_timeout.min(Duration::from_secs(5));
    s3.retry_max_backoff = s3.retry_max_backoff.min(s3.retry_timeout);
    s3.retry_initial_backoff = s3.retry_initial_backoff.min(s3.retry_max_backoff);
    let fetcher = Fetcher::new(crate::fetch::s3_client(&s3).await, &s3);
    Ok(AppState {
        thumbs: Arc::new(images::ThumbCache::new(cfg.review.thumbnail_cache_bytes)),
        limiter: Arc::new(login::LoginLimiter::new(cfg.review.login_max_failures, cfg.review.login_window)),
        cfg: Arc::new(cfg),
        store,
        fetcher: Arc::new(fetcher),
        prometheus: crate::metrics::install(),
    })
}

/// Binds `review.listen` now (a port clash fails start-up) and serves until `shutdown`.
pub async fn spawn(
    cfg: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    cfg.review.check_serving()?;
    let listen = cfg.review.listen;
    let state = state(cfg).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("review.listen {listen}: cannot bind: {e}"))?;
    let addr = listener.local_addr()?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!("review app failed: {e}");
        }
    });
    Ok((addr, task))
}
