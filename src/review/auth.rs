//! Who is asking: a session (the cookie holds a random token, the database its SHA-256; made by
//! [`super::login`]), an API token (`Authorization: Bearer`), or a trusted authenticating proxy's
//! header; roles from `[[review.users]]`, read on every request; the CSRF check of every form;
//! password hashing (Argon2id).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppError, AppState};
use crate::config::{ReviewConfig, Role};

/// The SHA-256 of a session token (what the database keeps).
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The session cookie (`__Host-` when secure: no Domain, Path=/, HTTPS only).
pub fn session_cookie(cfg: &ReviewConfig) -> &'static str {
    if cfg.secure_cookies {
        "__Host-blip2idc"
    } else {
        "blip2idc"
    }
}

/// The sign-in form's double-submit CSRF cookie.
pub fn login_cookie(cfg: &ReviewConfig) -> &'static str {
    if cfg.secure_cookies {
        "__Host-blip2idc-login"
    } else {
        "blip2idc-login"
    }
}

pub fn set_cookie(cfg: &ReviewConfig, name: &str, value: &str, max_age: Duration) -> HeaderValue {
    let secure = if cfg.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    ))
    .expect("cookie values are base64url")
}

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `s`, hex.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// An Argon2id hash with the parameters of [`hash_password`] that no configured user has: a sign-in
/// naming an unknown user is verified against it, so timing does not tell which names exist.
pub const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$i6uxlT0vgBxGgLy2uh4X8A$jRuBtH+AD69D4XhkyhX/aRJjGU+8y/1IwjoIC/g8/U4";

/// An Argon2id PHC string of `password` (OWASP's parameters: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("{e}"))?.to_string())
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Constant-time string equality.
pub fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A cookie's value by exact name.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A signed-in user: who, with which role, and the session's CSRF token (`None`: signed in with an
/// API token, which a browser never sends on its own).
#[derive(Clone, Debug)]
pub struct Authed {
    pub user: String,
    pub role: Role,
    pub csrf: Option<String>,
    pub client: String,
}

impl Authed {
    /// Refuses users below `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "{} is a {}: this needs the {} role",
                self.user,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Checks a form's CSRF token against the session's (API tokens need none).
    pub fn check_csrf(&self, token: &str) -> Result<(), AppError> {
        match &self.csrf {
            None => Ok(()),
            Some(expected) if equal(expected, token) => Ok(()),
            _ => Err(AppError::Forbidden(
                "the form's CSRF token is missing or stale: reload the page and try again".into(),
            )),
        }
    }

    /// Whether this user may write labels.
    pub fn can_review(&self) -> bool {
        self.role >= Role::Reviewer
    }
}

/// The client's address: the peer, or the first `X-Forwarded-For` hop when the peer is a trusted proxy.
pub fn client_ip(cfg: &ReviewConfig, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if cfg.trusted_proxies.contains(&peer.ip()) {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
        {
            return ip;
        }
    }
    peer.ip()
}

/// The user a trusted proxy vouches for, if the request came through one.
pub fn proxy_user(cfg: &ReviewConfig, peer: SocketAddr, headers: &HeaderMap) -> Option<String> {
    if cfg.proxy_user_header.is_empty() || !cfg.trusted_proxies.contains(&peer.ip()) {
        return None;
    }
    headers.get(cfg.proxy_user_header.as_str()).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let cfg = &state.cfg.review;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let client = client_ip(cfg, peer, &parts.headers).to_string();
        let wants = parts.uri.path_and_query().map_or("/".to_owned(), |p| p.to_string());
        let unauthenticated = || AppError::SignIn { next: wants.clone() };

        if let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let digest = sha256_hex(token.trim());
            let user =
                cfg.users.iter().find(|u| u.token_sha256.as_deref().is_some_and(|t| equal(&t.to_lowercase(), &digest)));
            return match user {
                Some(u) => Ok(Authed { user: u.name.clone(), role: u.role, csrf: None, client }),
                None => Err(AppError::Unauthorized("unknown API token".into())),
            };
        }

        let vouched = proxy_user(cfg, peer, &parts.headers);
        let Some(token) = cookie(&parts.headers, session_cookie(cfg)) else {
            return Err(unauthenticated());
        };
        let row = state.store.session(&token_digest(token)).await?;
        let Some((user, csrf)) = row else {
            return Err(unauthenticated());
        };
        if vouched.as_ref().is_some_and(|v| *v != user) {
            // The proxy now vouches for someone else: this session is not theirs.
            return Err(unauthenticated());
        }
        // The role is read from the configuration on every request: removing a user signs them out.
        let Some(u) = cfg.user(&user) else {
            return Err(unauthenticated());
        };
        Ok(Authed { user, role: u.role, csrf: Some(csrf), client })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_to_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsf", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash_password("correct horse").unwrap(), h, "salted");
        // The unknown-user hash costs what a real one does: the same algorithm and parameters.
        let params = |h: &str| h.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(UNKNOWN_USER_HASH), params(&h));
        assert!(!verify_password("no user has this password", UNKNOWN_USER_HASH));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("x-blip2idc=1; blip2idc=abc; other=2"));
        assert_eq!(cookie(&h, "blip2idc"), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn csrf_is_needed_for_sessions_only() {
        let mut who =
            Authed { user: "a".into(), role: Role::Reviewer, csrf: Some("tok".into()), client: "127.0.0.1".into() };
        assert!(who.check_csrf("tok").is_ok());
        assert!(who.check_csrf("tok2").is_err() && who.check_csrf("").is_err());
        who.csrf = None;
        assert!(who.check_csrf("").is_ok());
        assert!(who.require(Role::Reviewer).is_ok() && who.require(Role::Admin).is_err());
    }
}
