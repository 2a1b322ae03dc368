//! `GET /search`: full-text search over captions (PostgreSQL's `websearch_to_tsquery`, as
//! `search_captions` does, on the `caption_tsv` GIN index) with filters by source host, model
//! version, date range, changed/unchanged and edit action; newest, oldest or most relevant first;
//! keyset pagination (the next page starts after the last row's sort key, so page 10 000 costs what
//! page 1 does).

use axum::extract::{Query, State};
use base64::Engine;
use chrono::NaiveDate;
use maud::{html, Markup};
use serde::{Deserialize, Serialize};

use super::auth::Authed;
use super::layout;
use super::{AppError, AppState};
use crate::store::review::{CaptionSearch, SearchKey, SearchSort};

/// The search form's fields (all optional; empty strings mean "any").
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub version: String,
    /// "", "yes" or "no".
    #[serde(default)]
    pub changed: String,
    /// A C2PA action name.
    #[serde(default)]
    pub action: String,
    /// YYYY-MM-DD (UTC), inclusive.
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    /// "newest" (default), "oldest" or "relevance" (with a query).
    #[serde(default)]
    pub sort: String,
    /// Where the page starts (from the previous page's "Next" link).
    #[serde(default)]
    pub after: String,
}

/// A page cursor: the last row's sort key, base64url JSON.
pub fn encode_cursor(k: &SearchKey) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(k).expect("serializable"))
}

pub fn decode_cursor(s: &str) -> Option<SearchKey> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

impl SearchQuery {
    /// Checks the fields, with a message naming the one that is wrong.
    pub fn parse(&self) -> Result<CaptionSearch, AppError> {
        let date = |name: &str, v: &str| -> Result<Option<NaiveDate>, AppError> {
            some(v)
                .map(|v| {
                    NaiveDate::parse_from_str(&v, "%Y-%m-%d")
                        .map_err(|_| AppError::BadRequest(format!("{name} {v:?} is not a date (YYYY-MM-DD)")))
                })
                .transpose()
        };
        let q = some(&self.q);
        if q.as_ref().is_some_and(|q| q.len() > 500) {
            return Err(AppError::BadRequest("the query is longer than 500 characters".into()));
        }
        let sort = match self.sort.as_str() {
            "" | "newest" => SearchSort::Newest,
            "oldest" => SearchSort::Oldest,
            "relevance" if q.is_some() => SearchSort::Relevance,
            "relevance" => SearchSort::Newest,
            other => return Err(AppError::BadRequest(format!("sort {other:?} is not newest, oldest or relevance"))),
        };
        let changed = match self.changed.as_str() {
            "" => None,
            "yes" => Some(true),
            "no" => Some(false),
            other => return Err(AppError::BadRequest(format!("changed {other:?} is not yes or no"))),
        };
        let action = some(&self.action);
        if let Some(a) = &action {
            if !crate::analysis::actions::ORDER.contains(&a.as_str()) {
                return Err(AppError::BadRequest(format!("action {a:?} is not a C2PA action this service names")));
            }
        }
        let after = match some(&self.after) {
            None => None,
            Some(c) => {
                Some(decode_cursor(&c).ok_or_else(|| AppError::BadRequest("the page cursor is not valid".into()))?)
            }
        };
        if sort == SearchSort::Relevance && after.as_ref().is_some_and(|c| c.r.is_none()) {
            return Err(AppError::BadRequest("the page cursor is not one of a relevance sort".into()));
        }
        Ok(CaptionSearch {
            q,
            source: some(&self.source).map(|s| s.to_lowercase()),
            version: some(&self.version),
            changed,
            action,
            from: date("from", &self.from)?,
            to: date("to", &self.to)?,
            sort,
            after,
        })
    }
}

/// `GET /search`.
pub async fn page(State(s): State<AppState>, who: Authed, Query(form): Query<SearchQuery>) -> Result<Markup, AppError> {
    let search = form.parse()?;
    let size = s.cfg.review.page_size;
    let started = std::time::Instant::now();
    let mut hits = s.store.search_captions_page(&search, size).await?;
    let took = started.elapsed();
    let next = (hits.len() > size).then(|| {
        hits.truncate(size);
        let mut f = form.clone();
        f.after = encode_cursor(&hits.last().expect("a full page").key(search.sort));
        format!("/search?{}", query_string(&f))
    });
    let versions = s.store.version_names(100).await?;
    let first = {
        let mut f = form.clone();
        f.after.clear();
        format!("/search?{}", query_string(&f))
    };
    Ok(layout::page(
        "Search",
        &who,
        html! {
            form.filters #search method="get" action="/search" {
                input #q type="search" name="q" value=(form.q) placeholder="watermark removed, text added, …" aria-label="Search captions";
                label { "Source " input name="source" value=(form.source) placeholder="host"; }
                label { "Model " select name="version" {
                    option value="" { "any" }
                    @for v in &versions { option value=(v) selected[*v == form.version] { (v) } }
                } }
                label { "Changed " select name="changed" {
                    option value="" { "any" }
                    option value="yes" selected[form.changed == "yes"] { "changed" }
                    option value="no" selected[form.changed == "no"] { "unchanged" }
                } }
                label { "Action " select name="action" {
                    option value="" { "any" }
                    @for a in crate::analysis::actions::ORDER { option value=(a) selected[a == form.action] { (a.trim_start_matches("c2pa.")) } }
                } }
                label { "From " input type="date" name="from" value=(form.from); }
                label { "To " input type="date" name="to" value=(form.to); }
                label { "Sort " select name="sort" {
                    option value="newest" { "newest" }
                    option value="oldest" selected[form.sort == "oldest"] { "oldest" }
                    option value="relevance" selected[form.sort == "relevance"] { "relevance" }
                } }
                button #search-button type="submit" { "Search" }
            }
            p.summary { (hits.len()) " results on this page · " (format!("{:.0} ms", took.as_secs_f64() * 1e3)) }
            ol.results {
                @for h in &hits {
                    li.result data-event=(h.event_id) {
                        (layout::thumbs(&h.event_id))
                        div {
                            a.caption href=(format!("/pairs/{}", layout::pct(&h.event_id))) { (h.caption) }
                            div.meta {
                                span.version { (h.model_version) } " · " (layout::when(h.created_at))
                                @if let Some(host) = &h.source_host { " · " span.host { (host) } }
                                @match h.changed { Some(true) => { " · " span.tag.changed { "changed" } }, Some(false) => { " · " span.tag { "unchanged" } }, None => {} }
                                @if h.model_skipped { " · " span.tag { "model skipped" } }
                                " " (layout::actions(&h.actions))
                            }
                        }
                    }
                }
            }
            nav.pages {
                @if !form.after.is_empty() { a href=(first) { "← First page" } " " }
                @if let Some(n) = next { a #next-page href=(n) { "Next page →" } }
            }
        },
    ))
}

/// The query string of a search form.
fn query_string(f: &SearchQuery) -> String {
    let pairs = [
        ("q", &f.q),
        ("source", &f.source),
        ("version", &f.version),
        ("changed", &f.changed),
        ("action", &f.action),
        ("from", &f.from),
        ("to", &f.to),
        ("sort", &f.sort),
        ("after", &f.after),
    ];
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", layout::pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let c = SearchKey { t: chrono::Utc::now(), e: "pair/1".into(), m: "v1".into(), r: Some(0.25) };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        let q = SearchQuery { after: "not-a-cursor".into(), ..Default::default() };
        assert!(matches!(q.parse(), Err(AppError::BadRequest(_))));
    }

    #[test]
    fn fields_are_checked_with_their_names() {
        for (q, needle) in [
            (SearchQuery { from: "2026-13-01".into(), ..Default::default() }, "from"),
            (SearchQuery { sort: "random".into(), ..Default::default() }, "sort"),
            (SearchQuery { changed: "maybe".into(), ..Default::default() }, "changed"),
            (SearchQuery { action: "c2pa.painted".into(), ..Default::default() }, "action"),
        ] {
            match q.parse() {
                Err(AppError::BadRequest(m)) => assert!(m.starts_with(needle), "{m}"),
                other => panic!("{needle}: {:?}", other.err()),
            }
        }
        let ok = SearchQuery {
            q: "logo".into(),
            sort: "relevance".into(),
            source: "News.Example".into(),
            ..Default::default()
        };
        let s = ok.parse().unwrap();
        assert_eq!((s.sort, s.source.as_deref()), (SearchSort::Relevance, Some("news.example")));
        // Relevance without a query is newest first.
        assert_eq!(
            SearchQuery { sort: "relevance".into(), ..Default::default() }.parse().unwrap().sort,
            SearchSort::Newest
        );
    }
}
