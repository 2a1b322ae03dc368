//! `[review]`: the analysts' web app (`blip2idc review`): its listener, its users and roles, its
//! sessions and login limits, and the images it streams from S3.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[review]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// Address of the web app.
    pub listen: SocketAddr,
    /// Session and login cookies are `Secure` (sent over HTTPS only; browsers also keep them for
    /// `http://localhost`). Turn off only for plain-HTTP access on a trusted network.
    pub secure_cookies: bool,
    /// A session ends this long after the login.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed logins allowed per client address and per user name within `login_window`; more are
    /// answered 429 until the window has passed.
    pub login_max_failures: usize,
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Results per search page.
    pub page_size: usize,
    /// Largest image the app streams from S3 (bytes); larger objects are refused.
    pub max_image_bytes: u64,
    /// Longest side of a thumbnail (pixels).
    pub thumbnail_px: u32,
    /// Memory for cached thumbnails (bytes).
    pub thumbnail_cache_bytes: u64,
    /// The edit categories a correction can be filed under (the `category` of a label; the
    /// retraining job scores the holdout per category).
    pub categories: Vec<String>,
    /// Behind an authenticating proxy (an OIDC proxy such as oauth2-proxy): the request header that
    /// carries the signed-in user's name (e.g. `X-Auth-Request-Email`), trusted only on requests from
    /// `trusted_proxies`. The name must still be one of `users` (its role comes from there). Empty:
    /// no proxy; users sign in with their password.
    pub proxy_user_header: String,
    /// Addresses of the authenticating proxies.
    pub trusted_proxies: Vec<IpAddr>,
    /// Who may use the app.
    pub users: Vec<ReviewUser>,
}

/// One `[[review.users]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReviewUser {
    pub name: String,
    pub role: Role,
    /// An Argon2 PHC string (`blip2idc review hash-password` makes one); absent for users who only
    /// come through the proxy or with a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// SHA-256 (hex) of an API token sent as `Authorization: Bearer <token>` (`blip2idc review
    /// new-token` makes both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// What a user may do: viewers read; reviewers also label; admins also read the audit log and undo
/// anyone's decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Reviewer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }
}

/// A category name: 1-32 of a-z 0-9 _ -.
pub fn valid_category(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 32
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl ReviewConfig {
    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&ReviewUser> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Checks the section (every command validates it; `review` also needs [`Self::check_serving`]).
    pub fn check(&self, errs: &mut Vec<String>) {
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg)
            }
        };
        check(!self.session_ttl.is_zero(), "review.session_ttl must be > 0".into());
        check(self.login_max_failures > 0, "review.login_max_failures must be > 0".into());
        check(!self.login_window.is_zero(), "review.login_window must be > 0".into());
        check((1..=500).contains(&self.page_size), format!("review.page_size is {}; expected 1-500", self.page_size));
        check(self.max_image_bytes > 0, "review.max_image_bytes must be > 0".into());
        check(
            (32..=1024).contains(&self.thumbnail_px),
            format!("review.thumbnail_px is {}; expected 32-1024", self.thumbnail_px),
        );
        check(
            !self.categories.is_empty(),
            "review.categories is empty: a correction needs a category to choose".into(),
        );
        for c in &self.categories {
            check(valid_category(c), format!("review.categories entry {c:?} is not 1-32 of a-z 0-9 _ -"));
        }
        let header = &self.proxy_user_header;
        check(
            header.is_empty() || (header.len() <= 64 && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
            format!("review.proxy_user_header {header:?} is not an HTTP header name"),
        );
        check(
            header.is_empty() || !self.trusted_proxies.is_empty(),
            "review.proxy_user_header is set but review.trusted_proxies is empty: no request could use it".into(),
        );
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("review.users[{i}] ({:?})", u.name);
            check(
                !u.name.is_empty() && u.name.len() <= 128 && !u.name.chars().any(|c| c.is_control()),
                format!("{at}: name must be 1-128 printable characters"),
            );
            check(
                self.users.iter().filter(|o| o.name == u.name).count() == 1,
                format!("{at}: the name appears more than once"),
            );
            if let Some(h) = &u.password_hash {
                check(
                    argon2::PasswordHash::new(h).is_ok_and(|p| p.algorithm.as_str().starts_with("argon2")),
                    format!(
                        "{at}: password_hash is not an Argon2 PHC string ($argon2id$v=19$...); make one with \
                         `blip2idc review hash-password` (never write the password itself)"
                    ),
                );
            }
            if let Some(t) = &u.token_sha256 {
                check(
                    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()),
                    format!("{at}: token_sha256 must be 64 hex digits (`blip2idc review new-token` makes one)"),
                );
            }
            check(
                u.password_hash.is_some() || u.token_sha256.is_some() || !header.is_empty(),
                format!(
                    "{at}: no way to sign in: give a password_hash or a token_sha256, or set review.proxy_user_header"
                ),
            );
        }
    }

    /// What `blip2idc review` needs beyond [`Self::check`]: someone who can sign in.
    pub fn check_serving(&self) -> anyhow::Result<()> {
        if self.users.is_empty() {
            anyhow::bail!(
                "review.users is empty: nobody could sign in. Add users to the --config file:\n\n  \
                 [[review.users]]\n  name = \"alice\"\n  role = \"reviewer\"   # viewer | reviewer | admin\n  \
                 password_hash = \"$argon2id$...\"   # from `blip2idc review hash-password`"
            );
        }
        Ok(())
    }
}
