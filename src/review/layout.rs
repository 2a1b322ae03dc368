//! The page shell (navigation, who is signed in, the sign-out form), small rendering helpers and
//! the app's one stylesheet and one script (served from the binary; the content security policy
//! allows nothing inline).

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};

use super::auth::Authed;
use crate::config::Role;

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

/// `GET /static/app.css`.
pub async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], CSS)
}

/// `GET /static/app.js`.
pub async fn js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], JS)
}

fn head(title: &str) -> Markup {
    html! {
        (DOCTYPE)
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · blip2idc review" }
        link rel="stylesheet" href="/static/app.css";
        script src="/static/app.js" defer {}
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        html lang="en" {
            head { (head(title)) }
            body.bare { main { (body) } }
        }
    }
}

/// A page of the signed-in app.
pub fn page(title: &str, who: &Authed, body: Markup) -> Markup {
    html! {
        html lang="en" {
            head { (head(title)) }
            body {
                header.top {
                    nav {
                        a.brand href="/search" { "blip2idc" }
                        a href="/search" { "Search" }
                        a href="/review" { "Review" }
                        a href="/models" { "Models" }
                        @if who.role >= Role::Admin { a href="/audit" { "Audit" } }
                    }
                    div.who {
                        span #user { (who.user) } " · " span.role { (who.role.as_str()) }
                        form.inline method="post" action="/logout" {
                            (csrf(who))
                            button.link #sign-out type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(who: &Authed) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf.as_deref().unwrap_or("")); }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters kept).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A timestamp as analysts read it (UTC, to the second), machine-readable in `datetime`.
pub fn when(t: chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S")) } }
}

/// The two thumbnails of a pair, linking to its page.
pub fn thumbs(event_id: &str) -> Markup {
    let id = pct(event_id);
    html! {
        a.thumbs href=(format!("/pairs/{id}")) {
            img loading="lazy" alt="original" src=(format!("/thumb/{id}/original"));
            img loading="lazy" alt="republished" src=(format!("/thumb/{id}/republished"));
        }
    }
}

/// C2PA action names without their prefix, as tags.
pub fn actions(actions: &[String]) -> Markup {
    html! {
        @for a in actions { span.tag { (a.strip_prefix("c2pa.").unwrap_or(a)) } " " }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(pct("pair-1_a.b~"), "pair-1_a.b~");
        assert_eq!(pct("a/b c?d&e=\"<"), "a%2Fb%20c%3Fd%26e%3D%22%3C");
        assert_eq!(pct("é"), "%C3%A9");
    }

    #[test]
    fn markup_escapes_what_users_wrote() {
        let caption = "<script>alert(1)</script> & \"quotes\"";
        let html = html! { p title=(caption) { (caption) } }.into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("&quot;quotes&quot;"), "{html}");
    }
}
