//! The review queue (`GET /review`): unreviewed pairs one at a time, newest first, with keyboard
//! shortcuts (a accept, c correct, s skip, u undo). A decision (`POST /pairs/{id}/label`) is a row of
//! `labels`, which `blip2idc retrain` trains on: accepted (the model's caption) or corrected (the
//! analyst's text and an edit category), with who, when, and the caption and model version judged.
//! One decision per pair: deciding again replaces it, and `POST /labels/{id}/undo` removes it, until
//! a training run has used it. The store audits every write with the row before and after.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::auth::Authed;
use super::{layout, pair};
use super::{AppError, AppState};
use crate::config::Role;
use crate::store::review::{Decided, Decision};

#[derive(Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    decision: String,
    model_version: String,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    from: String,
}

/// A refused write, as the page that says why.
fn refused(d: Decided) -> AppError {
    match d {
        Decided::Done(_) => unreachable!("not a refusal"),
        Decided::Missing(m) => AppError::NotFound(m),
        Decided::Final(l) => AppError::Conflict(format!(
            "label #{} is already in the {} split of a training run: it is final",
            l.id,
            l.split.as_deref().unwrap_or("?")
        )),
        Decided::NotYours(l) => {
            AppError::Forbidden(format!("decision #{} is {}'s; only they or an admin can undo it", l.id, l.labeled_by))
        }
    }
}

/// `POST /pairs/{event_id}/label`.
pub async fn decide(
    State(s): State<AppState>,
    who: Authed,
    Path(event_id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Result<Response, AppError> {
    who.require(Role::Reviewer)?;
    who.check_csrf(&f.csrf)?;
    let category = Some(f.category.trim()).filter(|c| !c.is_empty());
    if let Some(c) = category {
        if !s.cfg.review.categories.iter().any(|k| k == c) {
            return Err(AppError::BadRequest(format!("category {c:?} is not one of review.categories")));
        }
    }
    let text = f.caption.split_whitespace().collect::<Vec<_>>().join(" ");
    let correction = match f.decision.as_str() {
        "accepted" => None,
        "corrected" if text.is_empty() || text.chars().count() > 500 => {
            return Err(AppError::BadRequest("a correction needs 1-500 characters of text".into()));
        }
        "corrected" => Some(text.as_str()),
        other => return Err(AppError::BadRequest(format!("decision {other:?} is not accepted or corrected"))),
    };
    let decision = Decision {
        event_id: &event_id,
        model_version: &f.model_version,
        correction,
        category,
        user: &who.user,
        client: &who.client,
    };
    match s.store.decide(&decision).await? {
        Decided::Done(_) => {
            metrics::counter!(crate::metrics::REVIEW_DECISIONS, "decision" => f.decision.clone()).increment(1);
            Ok(back(&f.from, &event_id))
        }
        other => Err(refused(other)),
    }
}

/// Where a form returns to: the queue's next pair, or the pair's page.
fn back(from: &str, event_id: &str) -> Response {
    if from == "queue" {
        Redirect::to("/review").into_response()
    } else {
        Redirect::to(&format!("/pairs/{}", layout::pct(event_id))).into_response()
    }
}

#[derive(Deserialize)]
pub struct UndoForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
}

/// `POST /labels/{id}/undo`: removes a decision (one's own; admins anyone's) not yet used for training.
pub async fn undo(
    State(s): State<AppState>,
    who: Authed,
    Path(id): Path<i64>,
    Form(f): Form<UndoForm>,
) -> Result<Response, AppError> {
    who.require(Role::Reviewer)?;
    who.check_csrf(&f.csrf)?;
    match s.store.undo_decision(id, &who.user, who.role >= Role::Admin, &who.client).await? {
        Decided::Done(before) => {
            metrics::counter!(crate::metrics::REVIEW_DECISIONS, "decision" => "undone").increment(1);
            Ok(match (f.from.as_str(), before.event_id) {
                ("pair", Some(e)) => back("pair", &e),
                _ => Redirect::to("/review").into_response(),
            })
        }
        other => Err(refused(other)),
    }
}

#[derive(Deserialize)]
pub struct QueueQuery {
    /// Only pairs from this source host.
    #[serde(default)]
    source: String,
    /// Continue after this pair (the "Skip" link).
    #[serde(default)]
    skip: String,
}

/// `GET /review`: the next unreviewed pair (its latest caption made by the model, no label yet).
pub async fn page(State(s): State<AppState>, who: Authed, Query(q): Query<QueueQuery>) -> Result<Markup, AppError> {
    let source = Some(q.source.trim().to_lowercase()).filter(|s| !s.is_empty());
    let skip = Some(q.skip.as_str()).filter(|s| !s.is_empty());
    let next = s.store.next_unreviewed(source.as_deref(), skip).await?;
    let recent = s.store.recent_decisions(&who.user, 5).await?;
    let today = s.store.decisions_today(&who.user).await?;
    let body = match &next {
        None => {
            html! { p.empty #queue-empty { "Nothing left to review" @if let Some(s) = &source { " from " (s) } "." } }
        }
        Some(event_id) => {
            let (pair, captions, labels) = pair::load(&s, event_id).await?;
            let skip_link = format!(
                "/review?skip={}&source={}",
                layout::pct(event_id),
                layout::pct(source.as_deref().unwrap_or(""))
            );
            html! {
                div.queue-nav {
                    a #skip href=(skip_link) title="s" { "Skip →" } span.kbd { "s" }
                    " · " a href=(format!("/pairs/{}", layout::pct(event_id))) { "Open pair page" }
                    @if !who.can_review() { " · " span.tag { "read-only: viewers cannot decide" } }
                }
                (pair::render(&s, &who, &pair, &captions, &labels, "queue"))
            }
        }
    };
    Ok(layout::page(
        "Review",
        &who,
        html! {
            h1 { "Review queue" }
            form.filters method="get" action="/review" {
                label { "Source " input name="source" value=(q.source) placeholder="any host"; }
                button type="submit" { "Filter" }
                span.summary { "You decided " (today) " today." }
            }
            (body)
            @if !recent.is_empty() {
                h2 { "Your last decisions" }
                ol.recent #recent {
                    @for r in &recent {
                        li data-label=(r.id) {
                            span.tag { (r.decision.as_deref().unwrap_or("")) } " "
                            @if let Some(e) = &r.event_id { a href=(format!("/pairs/{}", layout::pct(e))) { (e) } } " "
                            q { (r.caption) } " · " (layout::when(r.created_at))
                            @if r.split.is_some() {
                                " · " span.tag { "used for training" }
                            } @else if who.can_review() {
                                form.inline method="post" action=(format!("/labels/{}/undo", r.id)) {
                                    (layout::csrf(&who))
                                    input type="hidden" name="from" value="queue";
                                    button.link.undo type="submit" title="u undoes the latest" { "Undo" }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}
