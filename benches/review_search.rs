//! Search latency of the review app at a million captions, on the local stack's PostgreSQL
//! (`deploy/local/up.sh` must be running).
//!
//! `cargo bench --bench review_search -- --bench [--rows N] [--rebuild] [--repeat R]`
//!
//! Generates (once; kept in the database `blip2idc_bench_review` for later runs, `--rebuild` makes it
//! again) N pairs with one caption each (default 1 000 000): captions drawn from an edit vocabulary,
//! 50 source hosts, three model versions, spread evenly over 90 days, the change analysis' columns. Then times, as the
//! median of R runs (default 9), each search the app's pages make (`Store::search_captions_page`, the
//! query of `/search`) and the whole `/search` page through the running app (HTTP, rendering
//! included); the reference is the same deep page fetched by OFFSET, which is what keyset pagination
//! replaces: the ratio says how much faster page k is than it would be by OFFSET.
//! Without `--bench` (as `cargo test --benches` runs it) it does nothing.

mod common;
use common::{load_env, num};

use std::time::{Duration, Instant};

use blip2idc::config::{Config, ReviewUser, Role, Secret};
use blip2idc::store::review::{CaptionSearch, SearchSort};
use blip2idc::store::Store;

const DB: &str = "blip2idc_bench_review";

/// The generated table: pairs, model versions and one caption per pair.
async fn generate(store: &Store, rows: usize) -> anyhow::Result<()> {
    let pool = store.pool();
    let started = Instant::now();
    eprintln!("generating {rows} pairs and captions in {DB} (once; --rebuild makes them again)...");
    sqlx::query(
        "INSERT INTO model_versions (version, base_model, created_at)
         VALUES ('bench-v1', 'bench', now() - interval '90 days'), ('bench-v2', 'bench', now() - interval '60 days'),
                ('bench-v3', 'bench', now() - interval '30 days') ON CONFLICT DO NOTHING",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO image_pairs (event_id, original_uri, republished_uri, source_url, observed_at, kafka_topic,
                                  kafka_partition, kafka_offset)
         SELECT 'bench-' || i, 's3://images/o/' || i || '.jpg', 's3://images/r/' || i || '.jpg',
                'https://site' || (i % 50) || '.example/p/' || i, now() - (i::float8 * 7776000 / $1) * interval '1 second',
                'image-pairs', i % 12, i
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows as i64)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO captions (event_id, model_version, caption, inference_seconds, end_to_end_seconds, batch_size,
                               created_at, changed, regions, actions, model_skipped)
         SELECT 'bench-' || i,
                'bench-v' || (1 + i % 3),
                (ARRAY['the','a','one','another'])[1 + i % 4] || ' ' ||
                (ARRAY['red','blue','green','yellow','white','black','small','large'])[1 + (i / 4) % 8] || ' ' ||
                (ARRAY['logo','watermark','text','person','car','tree','sign','building','dog','label',
                       'banner','face','flag','window','boat','cat'])[1 + (i / 32) % 16] || ' ' ||
                (ARRAY['was removed','was added','was moved to the left','is now blue','was blurred',
                       'was replaced by a cup','appears in the corner','is gone'])[1 + (i / 512) % 8] ||
                CASE WHEN i % 10 = 0 THEN ' near the ' ||
                     (ARRAY['top','bottom','left edge','right edge','centre'])[1 + (i / 7) % 5] ELSE '' END,
                0.05, 0.2, 8,
                now() - (i::float8 * 7776000 / $1) * interval '1 second',
                i % 10 <> 0,
                CASE WHEN i % 10 = 0 THEN '[]'::jsonb ELSE jsonb_build_array(jsonb_build_array(i % 100, i % 80, i % 100 + 40, i % 80 + 30)) END,
                CASE WHEN i % 10 = 0 THEN ARRAY['c2pa.transcoded','c2pa.resized']
                     WHEN i % 3 = 0 THEN ARRAY['c2pa.edited','c2pa.removed']
                     WHEN i % 3 = 1 THEN ARRAY['c2pa.edited','c2pa.placed']
                     ELSE ARRAY['c2pa.edited','c2pa.color_adjustments'] END,
                i % 10 = 0
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows as i64)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    eprintln!("generated in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Median milliseconds of `repeat` runs of `f`, and its last result.
async fn time<T, F, Fut>(repeat: usize, mut f: F) -> anyhow::Result<(f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut ms = Vec::new();
    let mut last = None;
    for _ in 0..repeat {
        let t = Instant::now();
        last = Some(f().await?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], last.expect("repeat > 0")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let rows = num("--rows", 1_000_000);
    let repeat = num("--repeat", 9).max(1);
    load_env();
    blip2idc::telemetry::init(blip2idc::config::LogFormat::Pretty, "warn,sqlx=error");
    let mut cfg = Config::load(None)?;
    let admin = Store::connect_lazy(&cfg.database)?;
    let url = cfg.database.url.expose().to_owned();
    cfg.database.url = Secret::new(format!("{}/{DB}", url.rsplit_once('/').expect("a database URL").0));
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(DB)
        .fetch_one(admin.pool())
        .await?;
    let rebuild = std::env::args().any(|a| a == "--rebuild");
    if exists && rebuild {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {DB} WITH (FORCE)"))).execute(admin.pool()).await?;
    }
    if !exists || rebuild {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB}"))).execute(admin.pool()).await?;
    }
    let store = Store::connect_lazy(&cfg.database)?;
    store.migrate().await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM captions").fetch_one(store.pool()).await?;
    if have != rows as i64 {
        sqlx::query("TRUNCATE image_pairs, captions, labels CASCADE").execute(store.pool()).await?;
        generate(&store, rows).await?;
    }
    println!("review search latency, {rows} captions (median of {repeat} runs; ms)");
    let size = cfg.review.page_size;
    let searches: Vec<(&str, CaptionSearch)> = vec![
        ("newest, no filter (page 1)", CaptionSearch::default()),
        ("words: \"logo removed\"", CaptionSearch { q: Some("logo removed".into()), ..Default::default() }),
        (
            "words, most relevant first",
            CaptionSearch { q: Some("watermark blurred".into()), sort: SearchSort::Relevance, ..Default::default() },
        ),
        ("rare words: \"boat\" + \"corner\"", CaptionSearch { q: Some("boat corner".into()), ..Default::default() }),
        (
            "source host + changed",
            CaptionSearch { source: Some("site7.example".into()), changed: Some(true), ..Default::default() },
        ),
        ("action c2pa.removed", CaptionSearch { action: Some("c2pa.removed".into()), ..Default::default() }),
        ("model version", CaptionSearch { version: Some("bench-v2".into()), ..Default::default() }),
        (
            "date range (one week)",
            CaptionSearch {
                from: Some((chrono::Utc::now() - chrono::Duration::days(40)).date_naive()),
                to: Some((chrono::Utc::now() - chrono::Duration::days(34)).date_naive()),
                ..Default::default()
            },
        ),
    ];
    println!("{:<38} {:>9} {:>6}", "search (first page)", "ms", "rows");
    for (name, s) in &searches {
        let (ms, hits) = time(repeat, || store.search_captions_page(s, size)).await?;
        println!("{name:<38} {ms:>9.2} {:>6}", hits.len().min(size));
    }

    // Deep pages: keyset vs OFFSET (the reference).
    println!();
    println!("{:<38} {:>9} {:>9} {:>7}", "deep page (newest first)", "keyset", "OFFSET", "ratio");
    for depth in [1_000usize, 100_000, rows / 2] {
        let offset = depth.min(rows.saturating_sub(size + 1));
        let (offset_ms, by_offset) = time(repeat, || store.search_captions_offset(offset as i64, size as i64)).await?;
        let before = store.search_captions_offset(offset as i64 - 1, 1).await?;
        let s = CaptionSearch { after: Some(before[0].key(SearchSort::Newest)), ..Default::default() };
        let (keyset_ms, by_keyset) = time(repeat, || store.search_captions_page(&s, size)).await?;
        let same = by_keyset.iter().take(size).map(|h| &h.event_id).eq(by_offset.iter().map(|h| &h.event_id));
        anyhow::ensure!(same, "keyset and OFFSET pages differ at row {offset}");
        println!(
            "{:<38} {keyset_ms:>9.2} {offset_ms:>9.2} {:>6.0}×",
            format!("row {offset}"),
            offset_ms / keyset_ms.max(1e-6)
        );
    }

    // The page as a browser gets it.
    let token = "bench-review-token-0123456789abcdef";
    cfg.review.listen = "127.0.0.1:0".parse()?;
    cfg.review.users = vec![ReviewUser {
        name: "bench".into(),
        role: Role::Viewer,
        password_hash: None,
        token_sha256: Some(blip2idc::review::auth::sha256_hex(token)),
    }];
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, _task) = blip2idc::review::spawn(cfg.clone(), stop.clone()).await?;
    println!();
    println!("{:<38} {:>9}", "/search page over HTTP", "ms");
    for (name, query) in [
        ("newest, no filter", "/search"),
        ("words: logo removed", "/search?q=logo+removed"),
        ("source + changed + action", "/search?source=site7.example&changed=yes&action=c2pa.removed"),
        ("review queue (next unreviewed pair)", "/review"),
    ] {
        let url = format!("http://{addr}{query}");
        let (ms, status) = time(repeat, || {
            let url = url.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let r = ureq::get(&url).set("Authorization", &format!("Bearer {token}")).call()?;
                    let status = r.status();
                    r.into_string()?;
                    anyhow::Ok(status)
                })
                .await?
            }
        })
        .await?;
        anyhow::ensure!(status == 200, "{query}: {status}");
        println!("{name:<38} {ms:>9.2}");
    }
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
