//! `GET /pairs/{event_id}`: the original and the republished copy at full resolution (side by side,
//! flicker or slider; click to zoom), the changed regions drawn on the original, the caption of every
//! model version with that version's holdout scores, the labels already made, the source metadata
//! and where the event came from in Kafka; reviewers get the decision form (posted to
//! [`super::queue::decide`]).

use axum::extract::{Path, State};
use maud::{html, Markup};

use super::auth::Authed;
use super::layout;
use super::{AppError, AppState};
use crate::store::review::{LabelRow, PairCaption, PairRow};

/// The pair, its captions and its labels (404 when there is no such pair).
pub async fn load(s: &AppState, event_id: &str) -> Result<(PairRow, Vec<PairCaption>, Vec<LabelRow>), AppError> {
    let pair = s.store.pair(event_id).await?.ok_or_else(|| AppError::NotFound(format!("no pair {event_id:?}")))?;
    Ok((pair, s.store.pair_captions(event_id).await?, s.store.pair_labels(event_id).await?))
}

/// `GET /pairs/{event_id}`.
pub async fn page(State(s): State<AppState>, who: Authed, Path(event_id): Path<String>) -> Result<Markup, AppError> {
    let (pair, captions, labels) = load(&s, &event_id).await?;
    Ok(layout::page(&format!("Pair {event_id}"), &who, render(&s, &who, &pair, &captions, &labels, "pair")))
}

/// The pair view (shared with the review queue, which adds its own navigation).
pub fn render(
    s: &AppState,
    who: &Authed,
    pair: &PairRow,
    captions: &[PairCaption],
    labels: &[LabelRow],
    from: &str,
) -> Markup {
    let id = layout::pct(&pair.event_id);
    let latest = captions.first();
    let regions = latest.and_then(|c| c.regions.clone()).unwrap_or(serde_json::json!([]));
    let score = |h: &Option<serde_json::Value>, k: &str| {
        h.as_ref().and_then(|h| h.get(k)).and_then(|v| v.as_f64()).map(|v| format!("{v:.3}")).unwrap_or("–".into())
    };
    html! {
        section.pair #pair data-event=(pair.event_id) {
            div.compare-modes role="group" aria-label="Compare" {
                button type="button" data-mode="side" .active { "Side by side" }
                button type="button" data-mode="flicker" title="f" { "Flicker" }
                button type="button" data-mode="slider" { "Slider" }
                span.hint { "Click an image to zoom · f flicker" }
            }
            div.compare.side #compare {
                figure.original data-regions=(regions.to_string()) {
                    div.frame { img #original src=(format!("/img/{id}/original")) alt="original"; }
                    figcaption { "Original" }
                }
                figure.republished {
                    div.frame { img #republished src=(format!("/img/{id}/republished")) alt="republished copy"; }
                    figcaption { "Republished" }
                }
                input.slider type="range" min="0" max="100" value="50" aria-label="Slider position";
            }
        }
        @if who.can_review() {
            @if let Some(c) = latest {
                (decision_form(s, who, &pair.event_id, c, labels.iter().find(|l| l.decision.is_some()), from))
            }
        }
        section.details {
            div {
                h2 { "Captions" }
                table.captions {
                    thead { tr { th { "Model" } th { "Caption" } th { "Changed" } th { "Actions" } th { "Holdout CIDEr-D" } th { "BLEU-4" } th { "Captioned" } } }
                    tbody {
                        @for c in captions {
                            tr {
                                td { (c.model_version) @if c.promoted_at.is_some() { " " span.tag { "promoted" } } }
                                td.caption-text { (c.caption) @if c.model_skipped { " " span.tag { "model skipped" } } }
                                td { @match c.changed { Some(true) => "yes", Some(false) => "no", None => "–" } }
                                td { (layout::actions(&c.actions)) }
                                td { (score(&c.holdout, "cider")) }
                                td { (score(&c.holdout, "bleu4")) }
                                td { (layout::when(c.created_at)) " (" (format!("{:.0} ms", c.inference_seconds * 1e3)) ")" }
                            }
                        }
                    }
                }
                h2 { "Labels" }
                @if labels.is_empty() { p.empty #no-labels { "No label yet." } }
                ul.labels {
                    @for l in labels {
                        li data-label=(l.id) {
                            span.tag { (l.decision.as_deref().unwrap_or("inserted")) }
                            " " q { (l.caption) }
                            @if let Some(c) = &l.category { " · " span.tag { (c) } }
                            " · " (l.labeled_by) " · " (layout::when(l.created_at))
                            @if let Some(sp) = &l.split { " · " span.tag { "used for " (sp) } }
                        }
                    }
                }
            }
            aside.meta {
                h2 { "Source" }
                dl {
                    dt { "Event" } dd { code { (pair.event_id) } }
                    dt { "Source" } dd { @if let Some(u) = &pair.source_url { (u) } @else { "–" } }
                    dt { "Host" } dd { (pair.source_host.as_deref().unwrap_or("–")) }
                    dt { "Observed" } dd { @if let Some(t) = pair.observed_at { (layout::when(t)) } @else { "–" } }
                    dt { "First seen" } dd { (layout::when(pair.first_seen_at)) }
                    dt { "Original" } dd { code { (pair.original_uri) } }
                    dt { "Republished" } dd { code { (pair.republished_uri) } }
                    dt { "Kafka" } dd { code { (pair.kafka_topic) " [" (pair.kafka_partition) "] @ " (pair.kafka_offset) } }
                    dt { "Attributes" } dd { code { (pair.attributes.to_string()) } }
                    @if let Some(r) = latest.and_then(|c| c.regions.as_ref()) {
                        dt { "Regions" } dd { code #regions { (r.to_string()) } }
                    }
                }
            }
        }
    }
}

/// The form deciding on a pair's latest caption (`existing`: the pair's current decision).
pub fn decision_form(
    s: &AppState,
    who: &Authed,
    event_id: &str,
    caption: &PairCaption,
    existing: Option<&LabelRow>,
    from: &str,
) -> Markup {
    let corrected = existing.filter(|l| l.decision.as_deref() == Some("corrected"));
    html! {
        form.decision #decision method="post" action=(format!("/pairs/{}/label", layout::pct(event_id))) {
            (layout::csrf(who))
            input type="hidden" name="model_version" value=(caption.model_version);
            input type="hidden" name="from" value=(from);
            p.judged { "Caption by " code { (caption.model_version) } ": " strong #judged-caption { (caption.caption) } }
            @if let Some(l) = existing {
                p.existing #existing-decision { "Current decision: " span.tag { (l.decision.as_deref().unwrap_or("")) } " by " (l.labeled_by)
                    @if l.split.is_some() { " (used for training: final)" } }
            }
            div.row {
                button #accept type="submit" name="decision" value="accepted" title="a" { "✓ Accept caption" }
                span.kbd { "a" }
            }
            div.row {
                label { "Correction" textarea #correction name="caption" rows="2" maxlength="500"
                    placeholder="What changed, in the captions' style (c to focus)" {
                    (corrected.map_or(caption.caption.as_str(), |l| l.caption.as_str())) } }
                label { "Category " select #category name="category" {
                    option value="" { "—" }
                    @for c in &s.cfg.review.categories {
                        option value=(c) selected[existing.and_then(|l| l.category.as_deref()) == Some(c.as_str())] { (c) }
                    }
                } }
                button #correct type="submit" name="decision" value="corrected" { "✎ Save correction" }
            }
        }
    }
}
