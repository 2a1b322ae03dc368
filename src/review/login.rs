//! Signing in and out: the password form (with its own double-submit CSRF token), sessions made
//! for it or for a user a trusted proxy vouches for, failed attempts rate-limited per client address
//! and per user name, every sign-in audited.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::auth::{self, Authed};
use super::layout;
use super::{AppError, AppState};
use crate::config::ReviewConfig;
use crate::store::review::AuditEntry;

/// Failed sign-ins per key (client address, user name) within the window.
pub struct LoginLimiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        LoginLimiter { max, window, failures: Mutex::new(HashMap::new()) }
    }

    /// How long `keys` must wait before another attempt (None: they may try now).
    pub fn blocked(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        let mut wait = None;
        for k in keys {
            if let Some(q) = f.get_mut(k) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    q.pop_front();
                }
                if q.len() >= self.max {
                    let left = self.window - now.duration_since(*q.front().unwrap());
                    wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
                }
            }
        }
        wait
    }

    /// Counts a failure against every key.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        if f.len() > 100_000 {
            // Bounded memory under a flood of distinct keys: forget the oldest entries' windows.
            f.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        for k in keys {
            f.entry(k.clone()).or_default().push_back(now);
        }
    }

    /// Forgets the user name's failures after a successful sign-in.
    pub fn succeeded(&self, user_key: &str) {
        self.failures.lock().unwrap().remove(user_key);
    }
}

/// A sign-in or sign-out, for the audit log.
fn entry<'a>(user: &'a str, action: &'a str, client: &'a str) -> AuditEntry<'a> {
    AuditEntry { user, action, event_id: None, label_id: None, before: None, after: None, client }
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only paths of this app (no `//host` or scheme) are followed after a sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from URLs ("/\t/host" becomes "//host") and read a backslash as "/".
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.chars().any(|c| c == '\\' || c.is_control()) => {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// `GET /login`: the form (with a fresh double-submit token), or straight in behind a trusted proxy.
pub async fn login_page(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Result<Response, AppError> {
    let cfg = &s.cfg.review;
    let next = safe_next(q.next.as_deref());
    if let Some(user) = auth::proxy_user(cfg, peer, &headers) {
        if cfg.user(&user).is_none() {
            return Err(AppError::Forbidden(format!("{user} is not a user of this app (review.users)")));
        }
        let client = auth::client_ip(cfg, peer, &headers).to_string();
        return start_session(&s, &user, &client, &next, "login_proxy").await;
    }
    Ok(login_form(cfg, &next, None, StatusCode::OK))
}

fn login_form(cfg: &ReviewConfig, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let token = auth::random_token();
    let body = layout::bare(
        "Sign in",
        html! {
            form.login method="post" action="/login" {
                h1 { "blip2idc review" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                label { "User" input #username name="username" autocomplete="username" required autofocus; }
                label { "Password" input #password type="password" name="password" autocomplete="current-password" required; }
                button #sign-in type="submit" { "Sign in" }
            }
        },
    );
    let mut r = (status, body).into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, auth::set_cookie(cfg, auth::login_cookie(cfg), &token, Duration::from_secs(3600)));
    r
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// `POST /login`.
pub async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    let cfg = &s.cfg.review;
    let next = safe_next(f.next.as_deref());
    let double_submitted =
        auth::cookie(&headers, auth::login_cookie(cfg)).is_some_and(|c| !f.csrf.is_empty() && auth::equal(c, &f.csrf));
    if !double_submitted {
        return Err(AppError::Forbidden("the sign-in form's CSRF token is missing or stale: reload the page".into()));
    }
    let client = auth::client_ip(cfg, peer, &headers).to_string();
    let keys = [format!("ip:{client}"), format!("user:{}", f.username)];
    if let Some(wait) = s.limiter.blocked(&keys) {
        metrics::counter!(crate::metrics::REVIEW_LOGINS, "outcome" => "limited").increment(1);
        return Err(AppError::TooManyAttempts(wait));
    }
    let hash = cfg.user(&f.username).and_then(|u| u.password_hash.clone());
    let password = f.password.clone();
    let ok = tokio::task::spawn_blocking(move || {
        // An unknown user costs a verification too, so timing does not tell which names exist.
        let matches = auth::verify_password(&password, hash.as_deref().unwrap_or(auth::UNKNOWN_USER_HASH));
        matches && hash.is_some()
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?;
    if !ok {
        s.limiter.failed(&keys);
        metrics::counter!(crate::metrics::REVIEW_LOGINS, "outcome" => "failed").increment(1);
        s.store.audit(&entry(&f.username, "login_failed", &client)).await?;
        return Ok(login_form(cfg, &next, Some("Wrong user name or password."), StatusCode::UNAUTHORIZED));
    }
    s.limiter.succeeded(&keys[1]);
    start_session(&s, &f.username, &client, &next, "login").await
}

async fn start_session(s: &AppState, user: &str, client: &str, next: &str, action: &str) -> Result<Response, AppError> {
    let cfg = &s.cfg.review;
    let token = auth::random_token();
    s.store.create_session(&auth::token_digest(&token), user, &auth::random_token(), cfg.session_ttl).await?;
    metrics::counter!(crate::metrics::REVIEW_LOGINS, "outcome" => "ok").increment(1);
    s.store.audit(&entry(user, action, client)).await?;
    let mut r = Redirect::to(next).into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, auth::set_cookie(cfg, auth::session_cookie(cfg), &token, cfg.session_ttl));
    r.headers_mut().append(header::SET_COOKIE, auth::set_cookie(cfg, auth::login_cookie(cfg), "", Duration::ZERO));
    Ok(r)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: ends the session.
pub async fn logout(
    State(s): State<AppState>,
    who: Authed,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, AppError> {
    who.check_csrf(&f.csrf)?;
    let cfg = &s.cfg.review;
    if let Some(token) = auth::cookie(&headers, auth::session_cookie(cfg)) {
        s.store.end_session(&auth::token_digest(token)).await?;
    }
    s.store.audit(&entry(&who.user, "logout", &who.client)).await?;
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(header::SET_COOKIE, auth::set_cookie(cfg, auth::session_cookie(cfg), "", Duration::ZERO));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_the_allowed_failures_per_key() {
        let l = LoginLimiter::new(3, Duration::from_millis(200));
        let (a, b) = (vec!["ip:1".to_owned(), "user:x".to_owned()], vec!["ip:2".to_owned(), "user:y".to_owned()]);
        for _ in 0..3 {
            assert!(l.blocked(&a).is_none());
            l.failed(&a);
        }
        let wait = l.blocked(&a).expect("blocked after 3 failures");
        assert!(wait <= Duration::from_millis(200));
        assert!(l.blocked(&b).is_none(), "other keys are not affected");
        // The same user name from another address is still blocked.
        assert!(l.blocked(&["ip:3".to_owned(), "user:x".to_owned()]).is_some());
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.blocked(&a).is_none(), "the window passes");
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/pairs/a?b=1")), "/pairs/a?b=1");
        for bad in ["//evil.example/", "https://evil.example/", "/\\evil.example", "pairs", "/\t/evil.example", "/\n/x"]
        {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
