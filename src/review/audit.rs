//! `GET /audit` (admins): the audit log (`review_audit`, written by the store with every decision,
//! undo, sign-in and sign-out), newest first, with what was there before and after.

use axum::extract::{Query, State};
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Authed;
use super::layout;
use super::{AppError, AppState};
use crate::config::Role;

#[derive(Deserialize)]
pub struct AuditQuery {
    user: Option<String>,
    before: Option<i64>,
}

/// `GET /audit` (admins): newest first, 100 per page, optionally one user's.
pub async fn page(State(s): State<AppState>, who: Authed, Query(q): Query<AuditQuery>) -> Result<Markup, AppError> {
    who.require(Role::Admin)?;
    let user = q.user.filter(|u| !u.is_empty());
    let rows = s.store.audit_log(user.as_deref(), q.before).await?;
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    let next = (rows.len() == 100).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(layout::page(
        "Audit log",
        &who,
        html! {
            h1 { "Audit log" }
            form.filters method="get" action="/audit" {
                label { "User " input name="user" value=[user.as_deref()]; }
                button type="submit" { "Filter" }
            }
            table.audit {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Pair" } th { "Label" } th { "Before" } th { "After" } th { "Client" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { (layout::when(r.at)) }
                            td { (r.username) }
                            td { code { (r.action) } }
                            td { @if let Some(e) = &r.event_id { a href=(format!("/pairs/{}", layout::pct(e))) { (e) } } }
                            td { @if let Some(l) = r.label_id { (l) } }
                            td.json { (json(&r.before)) }
                            td.json { (json(&r.after)) }
                            td { (r.client.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            @if let Some(id) = next {
                a.next href=(format!("/audit?before={id}&user={}", layout::pct(user.as_deref().unwrap_or("")))) { "Older →" }
            }
        },
    ))
}
