//! The review web app (`blip2idc review`) on the real stack: PostgreSQL for captions, labels,
//! sessions and the audit log, the S3 server for the images it streams; driven in headless Chromium
//! through WebDriver (Debian's `chromium` + `chromium-driver`, started here). Screenshots of every
//! page go to `$CARGO_TARGET_TMPDIR/review-screenshots/` (printed at the end).
//! Also: labels made through the app are what `blip2idc retrain` trains on.

mod common;

use std::path::{Path, PathBuf};

use common::webdriver::{Browser, Driver};
use common::Scope;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use blip2idc::config::{ReviewUser, Role};
use blip2idc::review::auth::{hash_password, sha256_hex};

/// event_id, caption, decision, category, source_model_version, source_caption, labeled_by.
type LabelTuple = (String, String, String, Option<String>, Option<String>, Option<String>, String);

const ALICE_PASSWORD: &str = "alice-correct-horse";
const VERA_PASSWORD: &str = "vera-battery-staple";
const ROBOT_TOKEN: &str = "robot-token-0123456789abcdef0123456789";

fn users() -> Vec<ReviewUser> {
    let user = |name: &str, role, password: Option<&str>, token: Option<&str>| ReviewUser {
        name: name.into(),
        role,
        password_hash: password.map(|p| hash_password(p).unwrap()),
        token_sha256: token.map(sha256_hex),
    };
    vec![
        user("alice", Role::Reviewer, Some(ALICE_PASSWORD), None),
        user("vera", Role::Viewer, Some(VERA_PASSWORD), None),
        user("adam", Role::Admin, Some("adam-admin-password"), None),
        user("robot", Role::Reviewer, None, Some(ROBOT_TOKEN)),
    ]
}

/// Pairs `{prefix}-{i}` with images in S3 and a caption each by `version`, the newest first (pair 0
/// captioned now, pair i i minutes ago).
async fn seed_pairs(scope: &Scope, version: &str, captions: &[(&str, serde_json::Value)]) -> Vec<String> {
    let s3 = scope.s3().await;
    let pool = scope.store();
    let pool = pool.pool();
    sqlx::query("INSERT INTO model_versions (version, base_model) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(version)
        .bind(&scope.cfg.model.checkpoint)
        .execute(pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, (caption, analysis)) in captions.iter().enumerate() {
        let (a, b, _) = blip2idc_dev::synthetic_pair(i as u64 + 7, 256);
        let (ka, kb) = (format!("pairs/{i}/original.jpg"), format!("pairs/{i}/republished.jpg"));
        blip2idc_dev::put(&s3, &scope.bucket, &ka, blip2idc_dev::jpeg(&a, 90)).await.unwrap();
        blip2idc_dev::put(&s3, &scope.bucket, &kb, blip2idc_dev::jpeg(&b, 90)).await.unwrap();
        let id = format!("{}-{i}", scope.prefix);
        let host = if i % 2 == 0 { "news.example" } else { "blog.example" };
        sqlx::query(
            "INSERT INTO image_pairs (event_id, original_uri, republished_uri, source_url, observed_at, kafka_topic,
                                      kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, now(), 'image-pairs', 0, $5)",
        )
        .bind(&id)
        .bind(format!("s3://{}/{ka}", scope.bucket))
        .bind(format!("s3://{}/{kb}", scope.bucket))
        .bind(format!("https://{host}/story-{i}"))
        .bind(100 + i as i64)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO captions (event_id, model_version, caption, inference_seconds, end_to_end_seconds, batch_size,
                                   created_at, changed, regions, actions, model_skipped)
             VALUES ($1, $2, $3, 0.05, 0.2, 4, now() - make_interval(mins => $4), $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(version)
        .bind(caption)
        .bind(i as i32)
        .bind(analysis["changed"].as_bool())
        .bind(analysis.get("regions").cloned())
        .bind(
            analysis["actions"]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
        .bind(analysis["model_skipped"].as_bool().unwrap_or(false))
        .execute(pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

/// A plain HTTP client of the app (no redirects followed, cookies handled by hand).
struct Http {
    base: String,
    agent: ureq::Agent,
    cookies: Vec<String>,
}

struct Answer {
    status: u16,
    body: String,
    location: Option<String>,
    retry_after: Option<String>,
}

impl Http {
    fn new(base: &str) -> Http {
        Http { base: base.into(), agent: ureq::AgentBuilder::new().redirects(0).build(), cookies: Vec::new() }
    }

    fn answer(&mut self, r: Result<ureq::Response, ureq::Error>) -> Answer {
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        for c in r.all("set-cookie") {
            let pair = c.split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            if !pair.ends_with('=') {
                self.cookies.push(pair);
            }
        }
        let (status, location, retry_after) =
            (r.status(), r.header("location").map(str::to_owned), r.header("retry-after").map(str::to_owned));
        Answer { status, body: r.into_string().unwrap_or_default(), location, retry_after }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.agent.get(&format!("{}{path}", self.base)).set("Cookie", &self.cookies.join("; "));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = req.call();
        self.answer(r)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
        let mut req = self.agent.post(&format!("{}{path}", self.base)).set("Cookie", &self.cookies.join("; "));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let r = req.send_form(form);
        self.answer(r)
    }

    /// Signs in through the form (its double-submit token included).
    fn sign_in(&mut self, user: &str, password: &str) -> Answer {
        let page = self.get("/login", &[]);
        let token = csrf_of(&page.body);
        self.post("/login", &[("username", user), ("password", password), ("csrf", &token), ("next", "/review")], &[])
    }
}

/// The first CSRF field's value in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

async fn start_app(scope: &Scope) -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let (addr, _task) = blip2idc::review::spawn(scope.cfg.clone(), stop.clone()).await.expect("review app");
    (format!("http://localhost:{}", addr.port()), stop)
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("review-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analysts_search_compare_correct_and_accept_in_a_real_browser() {
    let mut scope = Scope::new("review").await;
    scope.fresh_database().await;
    scope.cfg.review.users = users();
    scope.cfg.review.listen = "127.0.0.1:0".parse().unwrap();
    scope.cfg.review.login_max_failures = 4;
    let changed =
        |regions: serde_json::Value, actions: &[&str]| json!({"changed": true, "regions": regions, "actions": actions});
    let ids = seed_pairs(
        &scope,
        "v2",
        &[
            (
                "the red logo was removed from the top left corner",
                changed(json!([[40, 30, 120, 90]]), &["c2pa.edited", "c2pa.removed"]),
            ),
            (
                "a line of text was added at the bottom",
                changed(json!([[10, 200, 240, 240]]), &["c2pa.edited", "c2pa.placed"]),
            ),
            ("the watermark logo is gone", changed(json!([[150, 150, 250, 250]]), &["c2pa.removed"])),
            ("the sky was recoloured", changed(json!([[0, 0, 256, 100]]), &["c2pa.color_adjustments"])),
            (
                "no visible change",
                json!({"changed": false, "regions": [], "actions": ["c2pa.resized"], "model_skipped": true}),
            ),
        ],
    )
    .await;
    // Holdout scores of two versions for the models page.
    let store = scope.store();
    let summary = |v: &str, cider: f64, add: f64| {
        json!({"holdout": {"version": v, "cider": cider, "bleu4": 0.2, "rouge_l": 0.4, "meteor": null,
                           "by_category": {"add": add, "remove": cider * 0.8}, "holdout_pairs": 40}})
    };
    sqlx::query(
        "UPDATE model_versions SET metrics = $1, promoted_at = now(), created_at = now() - interval '1 day' WHERE version = 'v2'",
    )
    .bind(summary("v2", 0.62, 0.5))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO model_versions (version, base_model, metrics) VALUES ('v3', $1, $2)")
        .bind(&scope.cfg.model.checkpoint)
        .bind(summary("v3", 0.71, 0.66))
        .execute(store.pool())
        .await
        .unwrap();

    let (base, stop) = start_app(&scope).await;
    let shots = screenshots();
    let (driver, base2, ids2) = (Driver::start(), base.clone(), ids.clone());
    // The browser steps block; run them beside the app's runtime threads.
    tokio::task::spawn_blocking(move || browse(&driver.session(), &base2, &ids2, &shots)).await.unwrap();

    // What the browser did is in PostgreSQL: two decisions by alice, and the audit log.
    let labels: Vec<LabelTuple> = sqlx::query_as(
        "SELECT event_id, caption, decision, category, source_model_version, source_caption, labeled_by
         FROM labels WHERE decision IS NOT NULL ORDER BY event_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert_eq!(labels[0].0, ids[0]);
    assert_eq!(labels[0].1, "the logo was removed from the top left");
    assert_eq!((labels[0].2.as_str(), labels[0].3.as_deref()), ("corrected", Some("remove")));
    assert_eq!(labels[0].4.as_deref(), Some("v2"));
    assert_eq!(labels[0].5.as_deref(), Some("the red logo was removed from the top left corner"));
    assert_eq!(
        (labels[1].0.as_str(), labels[1].1.as_str(), labels[1].2.as_str()),
        (ids[1].as_str(), "a line of text was added at the bottom", "accepted")
    );
    assert_eq!((labels[2].0.as_str(), labels[2].2.as_str()), (ids[2].as_str(), "accepted"));
    assert!(labels.iter().all(|l| l.6 == "alice"));
    let labels_uris: (String, String) =
        sqlx::query_as("SELECT original_uri, modified_uri FROM labels WHERE event_id = $1")
            .bind(&ids[0])
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(labels_uris.0, format!("s3://{}/pairs/0/original.jpg", scope.bucket));
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT username, action FROM review_audit ORDER BY id").fetch_all(store.pool()).await.unwrap();
    let alice: Vec<&str> = audit.iter().filter(|(u, _)| u == "alice").map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        alice,
        ["login_failed", "login", "corrected", "accepted", "undo", "accepted", "accepted", "logout"],
        "{audit:?}"
    );
    let undo: (serde_json::Value,) =
        sqlx::query_as("SELECT before FROM review_audit WHERE action = 'undo'").fetch_one(store.pool()).await.unwrap();
    assert_eq!(undo.0["decision"], "accepted");
    assert!(audit.iter().any(|(u, a)| u == "vera" && a == "login"));

    // Plain HTTP: API tokens, sign-in rate limits, image headers.
    let base3 = base.clone();
    let ids3 = ids.clone();
    tokio::task::spawn_blocking(move || {
        let mut robot = Http::new(&base3);
        let auth = format!("Bearer {ROBOT_TOKEN}");
        let page = robot.get("/search?q=logo", &[("Authorization", &auth)]);
        assert_eq!(page.status, 200);
        assert!(page.body.contains(&ids3[0]) && page.body.contains(&ids3[2]) && !page.body.contains(&ids3[1]));
        assert_eq!(robot.get("/search", &[("Authorization", "Bearer wrong")]).status, 401);
        // Thumbnails: JPEG, cached by the browser, 304 when unchanged.
        let thumb =
            robot.agent.get(&format!("{base3}/thumb/{}/original", ids3[3])).set("Authorization", &auth).call().unwrap();
        assert_eq!(thumb.content_type(), "image/jpeg");
        assert!(thumb.header("cache-control").unwrap().starts_with("private, max-age="));
        let etag = thumb.header("etag").unwrap().to_owned();
        let again =
            robot.get(&format!("/thumb/{}/original", ids3[3]), &[("Authorization", &auth), ("If-None-Match", &etag)]);
        assert_eq!(again.status, 304);
        assert_eq!(robot.get(&format!("/img/{}/elsewhere", ids3[3]), &[("Authorization", &auth)]).status, 404);
        // Without a session, pages send the browser to the sign-in form.
        let mut anonymous = Http::new(&base3);
        let r = anonymous.get("/models", &[]);
        assert_eq!((r.status, r.location.as_deref()), (303, Some("/login?next=%2Fmodels")));
        assert_eq!(anonymous.post(&format!("/pairs/{}/label", ids3[3]), &[("decision", "accepted")], &[]).status, 303);
        // The sign-in form itself needs its double-submit token.
        let r =
            anonymous.post("/login", &[("username", "alice"), ("password", ALICE_PASSWORD), ("csrf", "forged")], &[]);
        assert_eq!(r.status, 403);
        // Failed sign-ins from this address: the browser made one; the limit is 4.
        let mut mallory = Http::new(&base3);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let r = mallory.sign_in("alice", "guess");
            statuses.push(r.status);
            if r.status == 429 {
                assert!(r.retry_after.is_some_and(|s| s.parse::<u64>().unwrap() > 0));
                assert!(r.body.contains("Too many failed sign-ins"));
                break;
            }
        }
        assert_eq!(statuses, [401, 401, 401, 429], "{statuses:?}");
        // Even the right password waits now (from this address, and for this user).
        assert_eq!(mallory.sign_in("alice", ALICE_PASSWORD).status, 429);
    })
    .await
    .unwrap();
    stop.cancel();
    eprintln!("review app screenshots: {}", screenshots().display());
}

/// The browser session: sign in, search, open a pair, correct it, accept others from the queue (by
/// shortcut and by button), undo, CSRF refused, the models page, then a viewer who cannot write.
fn browse(b: &Browser, base: &str, ids: &[String], shots: &Path) {
    b.goto(&format!("{base}/search"));
    assert!(b.current_url().contains("/login?next=%2Fsearch"), "{}", b.current_url());
    b.find("#username").send_keys("alice");
    b.find("#password").send_keys("not her password");
    b.screenshot(&shots.join("01-login.png"));
    b.find("#sign-in").click();
    assert!(b.find("p.error").text().contains("Wrong user name or password"));
    b.find("#username").send_keys("alice");
    b.find("#password").send_keys(ALICE_PASSWORD);
    b.find("#sign-in").click();
    b.wait_until("the search page", |b| b.current_url().ends_with("/search"));
    assert_eq!(b.find("#user").text(), "alice");

    // Search.
    assert_eq!(b.find_all("li.result").len(), 5, "every caption, newest first");
    b.find("#q").send_keys("logo");
    b.find("#search-button").click();
    b.wait_until("logo results", |b| b.find_all("li.result").len() == 2);
    let found: Vec<String> = b.find_all("li.result").iter().map(|e| e.attr("data-event").unwrap()).collect();
    assert_eq!(found, [ids[0].clone(), ids[2].clone()]);
    b.wait_until("thumbnails", |b| {
        b.execute(
            "return [...document.querySelectorAll('a.thumbs img')].every(i => i.complete && i.naturalWidth > 0)",
            json!([]),
        ) == true
    });
    b.screenshot(&shots.join("02-search.png"));

    // The pair page: both images streamed through the app, the changed region drawn.
    b.find("li.result a.caption").click();
    b.wait_until("the pair page", |b| b.current_url().contains(&format!("/pairs/{}", ids[0])));
    b.wait_until("full images", |b| {
        b.execute(
            "return ['original','republished'].every(i => document.getElementById(i).naturalWidth === 256)",
            json!([]),
        ) == true
    });
    assert_eq!(b.find_all("#compare .region").len(), 1);
    assert!(b.find("#regions").text().contains("[[40,30,120,90]]"));
    b.screenshot(&shots.join("03-pair.png"));
    b.find("button[data-mode=slider]").click();
    assert!(b.find("#compare").attr("class").unwrap().contains("slider"));
    b.find("button[data-mode=side]").click();

    // Correct its caption.
    assert_eq!(b.find("#correction").text(), "the red logo was removed from the top left corner", "prefilled");
    b.find("#correction").clear();
    b.find("#correction").send_keys("the logo was removed from the top left");
    b.find("#category option[value=remove]").click();
    b.find("#correct").click();
    b.wait_until("the decision", |b| b.find_all("#existing-decision").len() == 1);
    assert!(b.find("ul.labels li").text().contains("corrected"));

    // The queue: the newest unreviewed pair is pair 1; `a` accepts it and the next one (pair 2) comes.
    b.goto(&format!("{base}/review"));
    b.find("#pair");
    let shown = |b: &Browser| {
        let v = b.execute("const p = document.getElementById('pair'); return p ? p.dataset.event : null", json!([]));
        v.as_str().unwrap_or("").to_owned()
    };
    assert_eq!(shown(b), ids[1]);
    b.screenshot(&shots.join("04-review.png"));
    b.press("a");
    b.wait_until("the next pair", |b| shown(b) == ids[2]);
    assert_eq!(b.find_all("#recent li").len(), 2);
    // Undo the accept: pair 1 is back in the queue; accept it again with the button.
    b.find("#recent button.undo").click();
    b.wait_until("pair 1 back", |b| shown(b) == ids[1]);
    assert_eq!(b.find_all("#recent li").len(), 1);
    b.find("#accept").click();
    b.wait_until("pair 2 again", |b| shown(b) == ids[2]);
    b.find("#accept").click();
    // Pair 3 is next; pair 4 was skipped by the model, so it never comes.
    b.wait_until("pair 3", |b| shown(b) == ids[3]);
    b.find("#skip").click();
    b.wait_until("the end of the queue", |b| b.find_all("#queue-empty").len() == 1);

    // A write without the CSRF token, or with a wrong one, is refused even from the app's own page.
    let post = |body: &str| {
        b.execute_async(
            "const [url, body, done] = arguments;
             fetch(url, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body,
                         redirect: 'manual'}).then(r => done(r.status), e => done(String(e)))",
            json!([format!("/pairs/{}/label", ids[3]), body]),
        )
    };
    assert_eq!(post("decision=accepted&model_version=v2"), json!(403));
    assert_eq!(post("decision=accepted&model_version=v2&csrf=guessed"), json!(403));

    // Models: versions with holdout scores per category, and the plot.
    b.goto(&format!("{base}/models"));
    assert_eq!(b.find_all("#cider-plot polyline").len(), 3, "overall, add, remove");
    assert!(b.find("#versions").text().contains("0.710"));
    b.screenshot(&shots.join("05-models.png"));

    // A viewer reads but cannot write.
    b.find("#sign-out").click();
    b.wait_until("signed out", |b| b.current_url().contains("/login"));
    b.find("#username").send_keys("vera");
    b.find("#password").send_keys(VERA_PASSWORD);
    b.find("#sign-in").click();
    b.wait_until("signed in as vera", |b| b.find_all("#user").first().is_some_and(|u| u.text() == "vera"));
    b.goto(&format!("{base}/pairs/{}", ids[3]));
    b.find("#pair");
    assert!(b.find_all("#decision").is_empty(), "no decision form for viewers");
    b.screenshot(&shots.join("06-viewer.png"));
    let token = b.execute("return document.querySelector('input[name=csrf]').value", json!([]));
    let status = b.execute_async(
        "const [url, body, done] = arguments;
         fetch(url, {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body})
           .then(r => r.text().then(t => done([r.status, t])))",
        json!([
            format!("/pairs/{}/label", ids[3]),
            format!("decision=accepted&model_version=v2&csrf={}", token.as_str().unwrap())
        ]),
    );
    assert_eq!(status[0], 403);
    assert!(status[1].as_str().unwrap().contains("vera is a viewer"), "{status}");
    b.goto(&format!("{base}/audit"));
    assert!(b.source().contains("needs the admin role"));
}

/// Decisions made through the app's HTTP forms are the labels the retraining job trains on; once a
/// run has used them they cannot be changed or undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_made_in_the_app_are_what_retrain_trains_on() {
    let mut scope = Scope::new("review-retrain").await;
    scope.fresh_database().await;
    let work = tempfile::tempdir().unwrap();
    let c = &mut scope.cfg;
    c.review.users = users();
    c.review.listen = "127.0.0.1:0".parse().unwrap();
    c.model.checkpoint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic/base").to_string_lossy().into_owned();
    c.model.max_new_tokens = 20;
    c.retrain.adapter_bucket = scope.bucket.clone();
    c.retrain.work_dir = work.path().to_owned();
    c.retrain.min_holdout = 4;
    c.retrain.holdout_fraction = 0.25;
    c.retrain.meteor = false;
    c.retrain.max_category_regression = 1.0;
    c.retrain.train.epochs = 1;
    c.retrain.train.batch_size = 8;
    c.retrain.train.max_length = 20;
    c.retrain.train.augment = None;

    // Sixteen synthetic pairs captioned by the base model: half right, half wrong.
    let s3 = scope.s3().await;
    let store = scope.store();
    sqlx::query("INSERT INTO model_versions (version, base_model) VALUES ('base', $1)")
        .bind(&scope.cfg.model.checkpoint)
        .execute(store.pool())
        .await
        .unwrap();
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut truth = Vec::new();
    for i in 0..16 {
        let (ka, kb) = (format!("r/{i}/a.jpg"), format!("r/{i}/b.jpg"));
        let p = blip2idc_dev::put_synthetic_pair(&s3, &scope.bucket, (&ka, &kb), &mut rng).await.unwrap();
        let id = format!("{}-{i}", scope.prefix);
        sqlx::query(
            "INSERT INTO image_pairs (event_id, original_uri, republished_uri, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, 't', 0, $4)",
        )
        .bind(&id)
        .bind(format!("s3://{}/{ka}", scope.bucket))
        .bind(format!("s3://{}/{kb}", scope.bucket))
        .bind(i as i64)
        .execute(store.pool())
        .await
        .unwrap();
        let model_said = if i % 2 == 0 { p.captions[0].clone() } else { "the picture is the same".to_owned() };
        sqlx::query(
            "INSERT INTO captions (event_id, model_version, caption, inference_seconds, end_to_end_seconds, batch_size)
             VALUES ($1, 'base', $2, 0.01, 0.1, 1)",
        )
        .bind(&id)
        .bind(&model_said)
        .execute(store.pool())
        .await
        .unwrap();
        truth.push((id, p.captions[0].clone(), p.kind));
    }

    let (base, stop) = start_app(&scope).await;
    let (truth2, base2) = (truth.clone(), base.clone());
    tokio::task::spawn_blocking(move || {
        let mut alice = Http::new(&base2);
        assert_eq!(alice.sign_in("alice", ALICE_PASSWORD).status, 303);
        let csrf = csrf_of(&alice.get("/review", &[]).body);
        for (i, (id, caption, kind)) in truth2.iter().enumerate() {
            let form: Vec<(&str, &str)> = if i % 2 == 0 {
                vec![("decision", "accepted"), ("model_version", "base"), ("csrf", &csrf), ("from", "queue")]
            } else {
                vec![
                    ("decision", "corrected"),
                    ("model_version", "base"),
                    ("caption", caption),
                    ("category", kind),
                    ("csrf", &csrf),
                    ("from", "queue"),
                ]
            };
            let r = alice.post(&format!("/pairs/{}/label", blip2idc::review::layout::pct(id)), &form, &[]);
            assert_eq!((r.status, r.location.as_deref()), (303, Some("/review")), "{}", r.body);
        }
    })
    .await
    .unwrap();

    let outcome = blip2idc::train::job::run_once(&scope.cfg).await.unwrap();
    assert_eq!(outcome.status, blip2idc::train::job::RunStatus::Succeeded, "{outcome:?}");
    let run: (i32, i32, i32) =
        sqlx::query_as("SELECT n_new_labels, n_train, n_holdout FROM training_runs WHERE id = $1")
            .bind(outcome.run_id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(run.0, 16, "every decision is a new label");
    assert_eq!(run.1 + run.2, 16, "{run:?}");
    assert!(run.2 >= 4);
    // The labels are the analysts' captions, and every one now has its split.
    let rows: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT event_id, caption, split, category FROM labels ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 16);
    for (row, (id, caption, kind)) in rows.iter().zip(&truth) {
        assert_eq!((&row.0, &row.1), (id, caption));
        assert!(row.2.is_some(), "split assigned: {row:?}");
        if row.3.is_some() {
            assert_eq!(row.3.as_deref(), Some(*kind));
        }
    }
    // Used labels are final: no undo, no new decision.
    let first = rows[0].0.clone();
    let label_id: i64 = sqlx::query_scalar("SELECT id FROM labels WHERE event_id = $1")
        .bind(&first)
        .fetch_one(store.pool())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        let mut alice = Http::new(&base);
        alice.sign_in("alice", ALICE_PASSWORD);
        let page = alice.get(&format!("/pairs/{}", blip2idc::review::layout::pct(&first)), &[]);
        assert!(page.body.contains("used for train") || page.body.contains("used for holdout"), "{}", page.body);
        let csrf = csrf_of(&page.body);
        let r = alice.post(&format!("/labels/{label_id}/undo"), &[("csrf", &csrf)], &[]);
        assert_eq!(r.status, 409, "{}", r.body);
        let r = alice.post(
            &format!("/pairs/{}/label", blip2idc::review::layout::pct(&first)),
            &[("decision", "corrected"), ("model_version", "base"), ("caption", "something else"), ("csrf", &csrf)],
            &[],
        );
        assert_eq!(r.status, 409, "{}", r.body);
    })
    .await
    .unwrap();
    stop.cancel();
}

/// Behind an authenticating (OIDC) proxy: the proxy's header names the user, trusted from the
/// configured proxy addresses only; the user must be listed; a session follows the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authenticating_proxy_signs_listed_users_in_by_its_header() {
    let mut scope = Scope::new("review-proxy").await;
    let listed = |name: &str, role| ReviewUser { name: name.into(), role, password_hash: None, token_sha256: None };
    scope.cfg.review.users = vec![listed("alice@example.org", Role::Reviewer), listed("bob@example.org", Role::Viewer)];
    scope.cfg.review.listen = "127.0.0.1:0".parse().unwrap();
    scope.cfg.review.proxy_user_header = "X-Auth-Request-Email".into();
    scope.cfg.review.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    // Pairs whose objects the app must not stream: a bucket outside s3.allowed_buckets, and an object
    // of the allowed bucket that is not an image (an SVG could carry script).
    let store = scope.store();
    blip2idc_dev::put(&scope.s3().await, &scope.bucket, "page.svg", b"<svg onload=alert(1)/>".to_vec()).await.unwrap();
    for (id, uri) in
        [("elsewhere", "s3://not-allowed-bucket/a.jpg".to_owned()), ("svg", format!("s3://{}/page.svg", scope.bucket))]
    {
        sqlx::query(
            "INSERT INTO image_pairs (event_id, original_uri, republished_uri, kafka_topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $2, 't', 0, 0) ON CONFLICT DO NOTHING",
        )
        .bind(format!("{}-{id}", scope.prefix))
        .bind(uri)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let prefix = scope.prefix.clone();
    let (trusted, stop) = start_app(&scope).await;
    // The same app with another proxy address: this test's requests are not from a proxy.
    scope.cfg.review.trusted_proxies = vec!["10.9.9.9".parse().unwrap()];
    let (untrusted, stop2) = start_app(&scope).await;
    tokio::task::spawn_blocking(move || {
        let alice = [("X-Auth-Request-Email", "alice@example.org")];
        let mut http = Http::new(&trusted);
        let r = http.get("/search", &alice);
        assert_eq!((r.status, r.location.as_deref()), (303, Some("/login?next=%2Fsearch")));
        let r = http.get("/login?next=%2Fsearch", &alice);
        assert_eq!((r.status, r.location.as_deref()), (303, Some("/search")), "signed in at once: {}", r.body);
        let r = http.get("/search", &alice);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("alice@example.org") && r.body.contains("reviewer"));
        let image = |http: &mut Http, id: &str| http.get(&format!("/img/{prefix}-{id}/original"), &alice).status;
        assert_eq!(image(&mut http, "elsewhere"), 403, "a bucket outside s3.allowed_buckets");
        assert_eq!(image(&mut http, "svg"), 415, "not a JPEG, PNG or WebP");
        assert_eq!(http.get(&format!("/thumb/{prefix}-svg/original"), &alice).status, 415);
        assert_eq!(image(&mut http, "missing"), 404);
        // The proxy now vouches for bob: alice's session is not used for him.
        let r = http.get("/search", &[("X-Auth-Request-Email", "bob@example.org")]);
        assert_eq!(r.status, 303);
        // A name that is not listed is refused.
        let mut other = Http::new(&trusted);
        let r = other.get("/login", &[("X-Auth-Request-Email", "mallory@example.org")]);
        assert_eq!(r.status, 403);
        assert!(r.body.contains("not a user of this app"));
        // From an address that is not a trusted proxy, the header means nothing.
        let mut direct = Http::new(&untrusted);
        let r = direct.get("/login", &alice);
        assert_eq!(r.status, 200);
        assert!(r.body.contains("id=\"password\""), "the password form");
        assert_eq!(direct.get("/search", &alice).status, 303);
    })
    .await
    .unwrap();
    stop.cancel();
    stop2.cancel();
}
