//! `GET /models`: the registry of `model.checkpoint` (versions, which is promoted, holdout scores
//! overall and per category), the promotion history and the training runs, with a server-side SVG
//! plot of holdout CIDEr-D over time (overall and per category).

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::auth::Authed;
use super::layout;
use super::{AppError, AppState};
use crate::train::promotion::EvalSummary;

/// A series of the plot: (time, score) points.
pub type Series = Vec<(DateTime<Utc>, f64)>;

/// Holdout CIDEr-D over time: "overall" and one series per category, from each version's metrics.
pub fn series(points: &[(DateTime<Utc>, EvalSummary)]) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for (t, s) in points {
        out.entry("overall".into()).or_default().push((*t, s.cider));
        for (c, v) in &s.by_category {
            out.entry(c.clone()).or_default().push((*t, *v));
        }
    }
    out
}

/// A line plot of `series` as inline SVG (axes, ticks, one coloured line and legend entry each).
pub fn plot(series: &BTreeMap<String, Series>) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const L: f64 = 48.0;
    const R: f64 = 120.0;
    const T: f64 = 12.0;
    const B: f64 = 28.0;
    const COLOURS: [&str; 8] = ["#1f4e79", "#c0504d", "#4f8a3c", "#8064a2", "#d18b00", "#2c9fa6", "#7f7f7f", "#b0507e"];
    let all: Vec<&(DateTime<Utc>, f64)> = series.values().flatten().collect();
    if all.is_empty() {
        return html! { p.empty { "No holdout scores yet: they appear after the first training run." } };
    }
    let (t0, t1) = all.iter().fold((i64::MAX, i64::MIN), |(a, b), (t, _)| (a.min(t.timestamp()), b.max(t.timestamp())));
    let span = ((t1 - t0) as f64).max(1.0);
    let ymax = all.iter().map(|(_, v)| *v).fold(0.0f64, f64::max).max(0.1) * 1.1;
    let x = |t: &DateTime<Utc>| {
        if t1 == t0 {
            L + (W - L - R) / 2.0
        } else {
            L + (t.timestamp() - t0) as f64 / span * (W - L - R)
        }
    };
    let y = |v: f64| T + (1.0 - v / ymax) * (H - T - B);
    let ticks: Vec<f64> = (0..=4).map(|i| ymax * i as f64 / 4.0).collect();
    let first = DateTime::<Utc>::from_timestamp(t0, 0).unwrap_or_default();
    let last = DateTime::<Utc>::from_timestamp(t1, 0).unwrap_or_default();
    html! {
        svg.plot #cider-plot xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}")) role="img"
            aria-label="Holdout CIDEr-D over time" {
            title { "Holdout CIDEr-D over time" }
            line x1=(L) y1=(T) x2=(L) y2=(H - B) stroke="#888" {}
            line x1=(L) y1=(H - B) x2=(W - R) y2=(H - B) stroke="#888" {}
            @for v in &ticks {
                line x1=(L - 4.0) y1=(y(*v)) x2=(W - R) y2=(y(*v)) stroke="#e4e4e4" {}
                text x=(L - 6.0) y=(y(*v) + 4.0) text-anchor="end" font-size="11" { (format!("{v:.2}")) }
            }
            text x=(L) y=(H - 8.0) font-size="11" { (first.format("%Y-%m-%d %H:%M")) }
            text x=(W - R) y=(H - 8.0) font-size="11" text-anchor="end" { (last.format("%Y-%m-%d %H:%M")) }
            @for (i, (name, pts)) in series.iter().enumerate() {
                @let colour = COLOURS[i % COLOURS.len()];
                @let width = if name == "overall" { 2.5 } else { 1.2 };
                polyline fill="none" stroke=(colour) stroke-width=(width) data-series=(name)
                    points=(pts.iter().map(|(t, v)| format!("{:.1},{:.1}", x(t), y(*v))).collect::<Vec<_>>().join(" ")) {}
                @for (t, v) in pts {
                    circle cx=(format!("{:.1}", x(t))) cy=(format!("{:.1}", y(*v))) r="3" fill=(colour) {
                        title { (name) " " (format!("{v:.3}")) " at " (t.format("%Y-%m-%d %H:%M")) }
                    }
                }
                rect x=(W - R + 10.0) y=(T + 16.0 * i as f64) width="10" height="10" fill=(colour) {}
                text x=(W - R + 24.0) y=(T + 16.0 * i as f64 + 9.0) font-size="11" { (name) }
            }
        }
    }
}

/// `GET /models`.
pub async fn page(State(s): State<AppState>, who: Authed) -> Result<Markup, AppError> {
    let base = &s.cfg.model.checkpoint;
    let fresh = crate::operator::fresh_window(s.cfg.model.reload_poll_interval);
    let versions = s.store.list_versions(base, fresh).await?;
    let promotions = s.store.promotion_history(base, 20).await?;
    let runs = s.store.training_runs(base, 50).await?;
    let holdout = |m: &serde_json::Value| serde_json::from_value::<EvalSummary>(m.get("holdout")?.clone()).ok();
    let holdouts: Vec<Option<EvalSummary>> = versions.iter().map(|v| holdout(&v.metrics)).collect();
    let mut scored: Vec<(DateTime<Utc>, EvalSummary)> =
        versions.iter().zip(&holdouts).filter_map(|(v, h)| h.clone().map(|h| (v.created_at, h))).collect();
    scored.sort_by_key(|(t, _)| *t);
    let categories: Vec<String> = {
        let mut c: Vec<String> = scored.iter().flat_map(|(_, s)| s.by_category.keys().cloned()).collect();
        c.sort();
        c.dedup();
        c
    };
    let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or("–".into());
    Ok(layout::page(
        "Models",
        &who,
        html! {
            h1 { "Models of " code { (base) } }
            (plot(&series(&scored)))
            h2 { "Versions" }
            table.versions #versions {
                thead { tr {
                    th { "Version" } th { "Created" } th { "Promoted" } th { "Consumers" }
                    th { "CIDEr-D" } th { "BLEU-4" } th { "ROUGE-L" } th { "METEOR" } th { "Holdout" }
                    @for c in &categories { th { (c) } }
                } }
                tbody {
                    @for (v, h) in versions.iter().zip(&holdouts) {
                        tr.promoted[v.promoted] {
                            td { code { (v.version) } @if v.promoted { " " span.tag { "promoted" } }
                                 @if let Some(e) = &v.load_error { " " span.tag.error title=(e) { "load failed" } } }
                            td { (layout::when(v.created_at)) }
                            td { @if let Some(t) = v.promoted_at { (layout::when(t)) } }
                            td { (v.consumers) }
                            td { (f(h.as_ref().map(|h| h.cider))) }
                            td { (f(h.as_ref().map(|h| h.bleu4))) }
                            td { (f(h.as_ref().map(|h| h.rouge_l))) }
                            td { (f(h.as_ref().and_then(|h| h.meteor))) }
                            td { @if let Some(h) = h { (h.holdout_pairs) } }
                            @for c in &categories { td { (f(h.as_ref().and_then(|h| h.by_category.get(c).copied()))) } }
                        }
                    }
                }
            }
            h2 { "Promotions" }
            table.promotions {
                thead { tr { th { "When" } th { "Action" } th { "Version" } th { "Replacing" } th { "By" } th { "Why" } } }
                tbody { @for p in &promotions { tr {
                    td { (layout::when(p.promoted_at)) } td { (p.action) } td { code { (p.version) } }
                    td { @if let Some(v) = &p.previous_version { code { (v) } } } td { (p.promoted_by) } td { (p.reason) }
                } } }
            }
            h2 { "Training runs" }
            table.runs {
                thead { tr { th { "Run" } th { "Started" } th { "Status" } th { "New labels" } th { "Train" } th { "Holdout" } th { "Candidate" } th { "Decision" } } }
                tbody { @for r in &runs { tr {
                    td { (r.id) } td { (layout::when(r.started_at)) } td { (r.status) @if r.promoted { " " span.tag { "promoted" } } }
                    td { (r.n_new_labels.map(|n| n.to_string()).unwrap_or_default()) }
                    td { (r.n_train.map(|n| n.to_string()).unwrap_or_default()) }
                    td { (r.n_holdout.map(|n| n.to_string()).unwrap_or_default()) }
                    td { @if let Some(v) = &r.candidate_version { code { (v) } } }
                    td { (r.decision.as_deref().unwrap_or("")) }
                } } }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_a_line_per_series_with_its_points_in_the_frame() {
        let t = |h: i64| DateTime::<Utc>::from_timestamp(1_790_000_000 + h * 3600, 0).unwrap();
        let pts = vec![
            (t(0), EvalSummary::scored(0.5, &[("add", 0.4)])),
            (t(24), EvalSummary::scored(0.9, &[("add", 0.7), ("remove", 1.2)])),
        ];
        let s = series(&pts);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["add", "overall", "remove"]);
        let svg = plot(&s).into_string();
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 5);
        for p in svg.split("points=\"").skip(1) {
            for xy in p.split('"').next().unwrap().split(' ') {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((48.0..=600.0).contains(&x) && (12.0..=232.0).contains(&y), "{xy}");
            }
        }
        // The higher score is drawn higher (smaller y).
        assert!(svg.contains("data-series=\"overall\""));
        assert!(plot(&BTreeMap::new()).into_string().contains("No holdout scores yet"));
    }
}
