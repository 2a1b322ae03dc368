//! The pipeline end to end against the real stack (tansu, s3s-fs, PostgreSQL), with a deterministic
//! test captioner (the BLIP-2 captioner runs in `crash_recovery.rs`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use blip2idc::caption::CaptionerFactory;
use blip2idc::config::Config;
use blip2idc::health::Health;
use blip2idc::pipeline::{self, Fatal, RunSummary};
use common::{test_captioner, Scope};
use tokio_util::sync::CancellationToken;

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<RunSummary>>,
    health: Arc<Health>,
}

fn start(cfg: &Config, factory: CaptionerFactory) -> Running {
    let cfg = cfg.clone();
    let shutdown = CancellationToken::new();
    let health = Arc::new(Health::default());
    let (s, h) = (shutdown.clone(), health.clone());
    let task = tokio::spawn(async move { pipeline::run(&cfg, factory, h, s).await });
    Running { shutdown, task, health }
}

impl Running {
    async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("shutdown in time").unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_stores_every_event_once_and_commits() {
    let scope = Scope::new("happy").await;
    let ids = scope.seed(0..30, 48).await;
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    scope.wait_for_captions(30, Duration::from_secs(60)).await;
    assert!(run.health.group_joined.load(std::sync::atomic::Ordering::Relaxed));
    assert!(run.health.model_loaded.load(std::sync::atomic::Ordering::Relaxed));
    let summary = run.stop().await;
    assert!(summary.fatal.is_none() && !summary.drain_timed_out, "{summary:?}");
    assert_eq!(scope.caption_count().await, 30);
    assert_eq!(scope.committed_total(), 30, "every stored event is committed at shutdown");
    scope.assert_all_committed("every stored event is committed at shutdown");

    // Source metadata and the analyst views.
    let (uri, attrs, host): (String, serde_json::Value, Option<String>) =
        sqlx::query_as("SELECT original_uri, attributes, source_host FROM image_pairs WHERE event_id = $1")
            .bind(&ids[0])
            .fetch_one(scope.store().pool())
            .await
            .unwrap();
    assert_eq!(uri, format!("s3://{}/0/a.jpg", scope.bucket));
    assert_eq!(attrs["test"], true);
    assert_eq!(host.as_deref(), Some("news.example"));
    let latest: i64 = sqlx::query_scalar("SELECT count(*) FROM latest_captions WHERE event_id LIKE $1 || '-%'")
        .bind(&scope.prefix)
        .fetch_one(scope.store().pool())
        .await
        .unwrap();
    assert_eq!(latest, 30);
    let found: i64 =
        sqlx::query_scalar("SELECT count(*) FROM search_captions('test caption') WHERE event_id LIKE $1 || '-%'")
            .bind(&scope.prefix)
            .fetch_one(scope.store().pool())
            .await
            .unwrap();
    assert_eq!(found, 30, "full-text search finds the captions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_input_kind_is_dead_lettered_while_the_rest_flows() {
    let mut scope = Scope::new("bad").await;
    scope.cfg.s3.max_object_bytes = 200_000;
    scope.cfg.kafka.max_event_bytes = 4096;
    scope.cfg.dlq.breaker_min_events = 1000; // this test rejects on purpose
    scope.cfg.dlq.breaker_window = 1000;
    let s3 = scope.s3().await;
    let b = scope.bucket.clone();
    let put = |k: &'static str, bytes: Vec<u8>| {
        let (s3, b) = (s3.clone(), b.clone());
        async move { blip2idc_dev::put(&s3, &b, k, bytes).await.unwrap() }
    };
    scope.seed(0..3, 40).await;
    let good = blip2idc_dev::jpeg(&blip2idc_dev::synthetic_pair(9, 40).0, 90);
    put("good.jpg", good.clone()).await;
    put("huge.bin", vec![0u8; 300_000]).await;
    put("text.jpg", b"this is not an image".to_vec()).await;
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 3);
    put("truncated.jpg", truncated).await;
    put("bomb.png", blip2idc_dev::png_bomb(60_000, 60_000)).await;
    put("scans.jpg", blip2idc_dev::progressive_scan_bomb(5000)).await;
    // A key with characters the SDK must encode: the request addresses exactly this object.
    const ODD_KEY: &str = "odd key+%2B \u{fc}?x=1&y#frag;.jpg";
    put(ODD_KEY, good.clone()).await;
    // A bucket that is not on the allow-list, which keys climbing out of the allowed one would reach
    // (the S3 server resolves `..` in the path).
    let private = format!("{b}-x");
    blip2idc_dev::ensure_bucket(&s3, &private).await.unwrap();
    blip2idc_dev::put(&s3, &private, "secret.jpg", good.clone()).await.unwrap();

    let p = &scope.prefix;
    let ev = |id: &str, a: &str| scope.event(&format!("{p}-{id}"), a, "good.jpg");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed_json", b"{\"event_id\": ".to_vec()),
        (
            "missing_field",
            serde_json::json!({"event_id": format!("{p}-x"), "original": "s3://a/b"}).to_string().into_bytes(),
        ),
        ("bad_uri", {
            let mut e = ev("uri", "good.jpg");
            e["original"] = "https://example.com/a.jpg".into();
            e.to_string().into_bytes()
        }),
        ("bucket_not_allowed", {
            let mut e = ev("bucket", "good.jpg");
            e["original"] = "s3://someone-elses-bucket/a.jpg".into();
            e.to_string().into_bytes()
        }),
        ("bad_uri", ev("dotdot", &format!("../{private}/secret.jpg")).to_string().into_bytes()),
        ("bad_uri", ev("encoded-dotdot", &format!("%2e%2e/{private}/secret.jpg")).to_string().into_bytes()),
        ("bad_uri", ev("encoded-slash", &format!("..%2F{private}%2Fsecret.jpg")).to_string().into_bytes()),
        ("object_missing", ev("missing", "does/not/exist.jpg").to_string().into_bytes()),
        ("object_too_large", ev("large", "huge.bin").to_string().into_bytes()),
        ("not_an_image", ev("text", "text.jpg").to_string().into_bytes()),
        ("corrupt_image", ev("corrupt", "truncated.jpg").to_string().into_bytes()),
        ("image_too_large", ev("bomb", "bomb.png").to_string().into_bytes()),
        ("image_too_large", ev("scans", "scans.jpg").to_string().into_bytes()),
        ("event_too_large", {
            let mut e = ev("big-event", "good.jpg");
            e["attributes"]["padding"] = "x".repeat(5000).into();
            e.to_string().into_bytes()
        }),
    ];
    cases.push((
        "invalid_field",
        serde_json::json!({"event_id": 5, "original": "s3://a/b", "republished": "s3://a/c"}).to_string().into_bytes(),
    ));
    for (i, (_, payload)) in cases.iter().enumerate() {
        scope.publish_raw(&format!("bad-{i}"), payload).await;
    }
    scope.seed(3..6, 40).await;
    scope.publish_json("odd", &ev("odd", ODD_KEY)).await;

    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    scope.wait_for_captions(7, Duration::from_secs(60)).await;
    let letters = scope.dead_letters(cases.len(), Duration::from_secs(30));
    let summary = run.stop().await;
    assert!(summary.fatal.is_none(), "{summary:?}");
    assert_eq!(scope.caption_count().await, 7, "good events flow around the bad ones");
    assert_eq!(letters.len(), cases.len(), "one dead letter per bad event: {letters:#?}");
    for (kind, payload) in &cases {
        let l = letters.iter().find(|l| &l.payload == payload).unwrap_or_else(|| panic!("no dead letter for {kind}"));
        assert_eq!(l.headers["error.kind"], *kind, "{l:#?}");
        assert!(!l.headers["error.message"].is_empty());
        assert_eq!(l.headers["source.topic"], scope.cfg.kafka.input_topic);
        assert!(l.headers["source.offset"].parse::<i64>().is_ok());
        assert!(l.headers["source.partition"].parse::<i32>().is_ok());
        assert!(l.headers.contains_key("dead_lettered_at"));
    }
    assert_eq!(scope.committed_total(), (7 + cases.len()) as i64, "dead-lettered events count as done");
    scope.assert_all_committed("dead-lettered events count as done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_stops_consumption_when_everything_is_rejected_and_survives_restarts() {
    let mut scope = Scope::new("breaker").await;
    scope.cfg.dlq.breaker_window = 20;
    scope.cfg.dlq.breaker_min_events = 5;
    scope.cfg.dlq.breaker_max_ratio = 0.5;
    for i in 0..30 {
        scope.publish_raw(&format!("k{i}"), b"garbage").await;
    }
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    let summary =
        tokio::time::timeout(Duration::from_secs(60), run.task).await.expect("stops by itself").unwrap().unwrap();
    assert!(matches!(summary.fatal, Some(Fatal::BreakerTripped { .. })), "{summary:?}");
    assert_eq!(summary.exit_code(), 3);
    // Every dead letter was acknowledged before the pipeline stopped: a short read sees them all.
    let dead = scope.dead_letters(30, Duration::from_secs(3)).len();
    assert!((4..30).contains(&dead), "the breaker stopped the flood after {dead} dead letters");
    assert!(scope.committed_total() <= dead as i64, "nothing past the tripping event is committed");
    let breaker = |action: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
            .args(["breaker", action, "--group", &scope.cfg.kafka.group_id])
            .output()
            .unwrap()
    };
    let status = breaker("status");
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("malformed_json"), "{status:?}");

    // A restart (the next pod, or a replica) holds: unready, consuming nothing, dead-lettering nothing.
    let held = start(&scope.cfg, test_captioner(Duration::ZERO));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(held.health.breaker_tripped.load(std::sync::atomic::Ordering::Relaxed));
    assert!(!held.health.group_joined.load(std::sync::atomic::Ordering::Relaxed), "a held consumer joined the group");
    assert_eq!(scope.dead_letters(30, Duration::from_secs(2)).len(), dead, "a held consumer dead-lettered");

    // An operator resets it: the held consumer resumes (and, the input still being garbage, trips again
    // after a handful more).
    let reset = breaker("reset");
    assert!(reset.status.success() && String::from_utf8_lossy(&reset.stdout).contains("reset"), "{reset:?}");
    let summary =
        tokio::time::timeout(Duration::from_secs(60), held.task).await.expect("resumes, then trips").unwrap().unwrap();
    assert!(matches!(summary.fatal, Some(Fatal::BreakerTripped { .. })), "{summary:?}");
    let again = scope.dead_letters(30, Duration::from_secs(3)).len();
    assert!(again > dead && again < 30, "resumed after the reset: {dead} then {again} dead letters");

    // With a cooldown, a trip resets itself once it has passed.
    scope.cfg.dlq.breaker_cooldown = Duration::from_secs(2);
    let cooled = start(&scope.cfg, test_captioner(Duration::ZERO));
    let summary = tokio::time::timeout(Duration::from_secs(60), cooled.task)
        .await
        .expect("resumes, then trips")
        .unwrap()
        .unwrap();
    assert!(matches!(summary.fatal, Some(Fatal::BreakerTripped { .. })), "{summary:?}");
    assert!(scope.dead_letters(30, Duration::from_secs(3)).len() > again, "resumed after the cooldown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_events_never_make_second_rows() {
    let mut scope = Scope::new("redeliver").await;
    scope.seed(0..12, 40).await;
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    scope.wait_for_captions(12, Duration::from_secs(60)).await;
    run.stop().await;
    // A second consumer group reads the same events again: every one is redelivered.
    scope.cfg.kafka.group_id.push_str("-again");
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scope.committed_total() < 12 {
        assert!(std::time::Instant::now() < deadline, "the second group did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.stop().await;
    assert_eq!(scope.caption_count().await, 12, "upsert on (event_id, model_version)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_commits_exactly_what_was_stored() {
    let mut scope = Scope::new("graceful").await;
    scope.cfg.pipeline.max_batch_size = 2;
    scope.cfg.pipeline.max_in_flight = 4;
    scope.seed(0..40, 40).await;
    let run = start(&scope.cfg, test_captioner(Duration::from_millis(100)));
    scope.wait_for_captions(4, Duration::from_secs(60)).await;
    let summary = run.stop().await;
    assert!(!summary.drain_timed_out);
    let committed = blip2idc_dev::committed_offsets(
        &scope.cfg.kafka.brokers,
        &scope.cfg.kafka.group_id,
        &scope.cfg.kafka.input_topic,
        3,
    )
    .unwrap();
    for (p, &c) in committed.iter().enumerate() {
        // Every offset below the committed position has a stored caption.
        let stored_below: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM image_pairs p JOIN captions c USING (event_id)
             WHERE p.kafka_topic = $1 AND p.kafka_partition = $2 AND p.kafka_offset < $3",
        )
        .bind(&scope.cfg.kafka.input_topic)
        .bind(p as i32)
        .bind(c.max(0))
        .fetch_one(scope.store().pool())
        .await
        .unwrap();
        assert_eq!(stored_below, c.max(0), "partition {p}: committed {c} but only {stored_below} stored below it");
    }
    assert_eq!(scope.committed_total(), scope.caption_count().await, "drained: all stored work is committed");
    assert!(scope.caption_count().await < 40, "shutdown happened mid-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backpressure_pauses_and_resumes_without_losing_events() {
    let mut scope = Scope::new("backpressure").await;
    scope.cfg.pipeline.max_in_flight = 4;
    scope.cfg.pipeline.max_batch_size = 2;
    scope.seed(0..40, 32).await;
    let run = start(&scope.cfg, test_captioner(Duration::from_millis(15)));
    scope.wait_for_captions(40, Duration::from_secs(90)).await;
    run.stop().await;
    assert_eq!(scope.caption_count().await, 40);
    assert_eq!(scope.committed_total(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_share_the_partitions_and_survive_a_rebalance() {
    two_members_rebalance(None).await;
}

/// Incremental rebalancing: only moved partitions are revoked, so the kept ones must keep the events
/// waiting for a permit (before the fix they were dropped and their commits passed them: events lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cooperative_rebalancing_drops_only_the_revoked_partitions_work() {
    two_members_rebalance(Some("cooperative-sticky")).await;
}

async fn two_members_rebalance(strategy: Option<&str>) {
    let mut scope = Scope::new("rebalance").await;
    if let Some(s) = strategy {
        scope.cfg.kafka.properties.0.insert("partition.assignment.strategy".into(), s.into());
    }
    scope.cfg.pipeline.max_batch_size = 2;
    scope.cfg.pipeline.max_in_flight = 4; // keeps both members paused part of the time
    scope.seed(0..30, 32).await;
    let a = start(&scope.cfg, test_captioner(Duration::from_millis(20)));
    scope.wait_for_captions(5, Duration::from_secs(60)).await;
    // A second member joins: the partitions are split, paused ones are re-paused after the rebalance.
    let b = start(&scope.cfg, test_captioner(Duration::from_millis(20)));
    scope.seed(30..60, 32).await;
    // Let that rebalance finish before the first member leaves. (tansu 0.6 keeps a member that leaves
    // mid-rebalance as the group leader forever, so the group never stabilises; Kafka handles it.)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !b.health.group_joined.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(std::time::Instant::now() < deadline, "the second member got no assignment in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scope.wait_for_captions(40, Duration::from_secs(60)).await;
    // The first member leaves: its partitions move to the second.
    let first = a.stop().await;
    assert!(first.fatal.is_none());
    scope.seed(60..80, 32).await;
    scope.wait_for_captions(80, Duration::from_secs(90)).await;
    b.stop().await;
    assert_eq!(scope.caption_count().await, 80, "every event stored once");
    assert_eq!(scope.committed_total(), 80);
    scope.assert_all_committed("every partition committed to its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let scope = Scope::new("admin").await;
    let prometheus = blip2idc::metrics::install();
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let (addr, task) =
        blip2idc::admin::spawn("127.0.0.1:0".parse().unwrap(), health.clone(), scope.store(), prometheus, stop.clone())
            .await
            .unwrap();
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"database_reachable\":true"), "{body}");
    let (code, _) = http_get(addr, "/startedz").await;
    assert_eq!(code, 503, "the model is not loaded yet");
    health.group_joined.store(true, std::sync::atomic::Ordering::Relaxed);
    health.model_loaded.store(true, std::sync::atomic::Ordering::Relaxed);
    let (code, _) = http_get(addr, "/readyz").await;
    assert_eq!(code, 200);
    let (code, _) = http_get(addr, "/startedz").await;
    assert_eq!(code, 200);
    metrics::counter!(blip2idc::metrics::CONSUMED).increment(1);
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("blip2idc_events_consumed_total"), "{body}");
    stop.cancel();
    task.await.unwrap();
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    (code, body)
}

/// `blip2idc caption` reads s3:// objects as the service does (same fetcher, allow-list, limits) and
/// says what is missing when it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_cli_reads_s3_objects_like_the_service() {
    let scope = Scope::new("cli-s3").await;
    let s3 = scope.s3().await;
    let (a, b, _) = blip2idc_dev::synthetic_pair(3, 64);
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.png"), dir.path().join("b.png"));
    a.save(&pa).unwrap();
    b.save(&pb).unwrap();
    blip2idc_dev::put(&s3, &scope.bucket, "cli/a.png", std::fs::read(&pa).unwrap()).await.unwrap();
    blip2idc_dev::put(&s3, &scope.bucket, "cli/b.png", std::fs::read(&pb).unwrap()).await.unwrap();
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/blip2/tiny-a");
    let allowed = format!("[\"{}\"]", scope.bucket);
    let run = |images: [&str; 2], env: &[(&str, &str)], remove: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"));
        cmd.args(["caption", "--json", "--max-new-tokens", "12", "--model", model]).args(images);
        cmd.env("BLIP2IDC_S3__ALLOWED_BUCKETS", &allowed).env("BLIP2IDC_S3__REQUEST_TIMEOUT", "2s");
        for (k, v) in env {
            cmd.env(k, v);
        }
        for k in remove {
            cmd.env_remove(k);
        }
        cmd.output().unwrap()
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let local = run([pa.to_str().unwrap(), pb.to_str().unwrap()], &[], &[]);
    assert!(local.status.success(), "{}", text(&local));
    let (ua, ub) = (format!("s3://{}/cli/a.png", scope.bucket), format!("s3://{}/cli/b.png", scope.bucket));
    let remote = run([&ua, &ub], &[], &[]);
    assert!(remote.status.success(), "{}", text(&remote));
    assert_eq!(remote.stdout, local.stdout, "the same pixels give the same caption");

    // The service's rules and clear errors.
    type Case<'a> = (&'a str, [&'a str; 2], Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let failures: [Case; 5] = [
        ("not in s3.allowed_buckets", [&ua, "s3://elsewhere/b.png"], vec![], vec![]),
        ("no such object", [&ua, &format!("s3://{}/cli/nope.png", scope.bucket)], vec![], vec![]),
        ("\"..\" path segment", [&ua, &format!("s3://{}/../elsewhere/b.png", scope.bucket)], vec![], vec![]),
        (
            "no AWS credentials",
            [&ua, &ub],
            vec![("HOME", dir.path().to_str().unwrap()), ("AWS_EC2_METADATA_DISABLED", "true")],
            vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"],
        ),
        (
            "no answer from the S3 endpoint http://127.0.0.1:9",
            [&ua, &ub],
            vec![("BLIP2IDC_S3__ENDPOINT", "http://127.0.0.1:9")],
            vec![],
        ),
    ];
    for (needle, images, env, remove) in failures {
        let out = run(images, &env, &remove);
        assert!(!out.status.success(), "{needle}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// `blip2idc caption --batch`: one output line per input line (captions identical to one-pair runs,
/// failures reported per line without stopping), and a rerun resumes: captioned ids are skipped, a
/// line cut short by an interruption and failed ids are done again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caption_batch_file_reports_failures_per_line_and_resumes() {
    let scope = Scope::new("cli-batch").await;
    let s3 = scope.s3().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..5u64 {
        let (a, b, _) = blip2idc_dev::synthetic_pair(20 + i, 48);
        let (pa, pb) = (dir.path().join(format!("a{i}.png")), dir.path().join(format!("b{i}.png")));
        a.save(&pa).unwrap();
        b.save(&pb).unwrap();
        let original = if i == 4 {
            // One pair's original from S3, read as the service reads it.
            blip2idc_dev::put(&s3, &scope.bucket, "batch/a4.png", std::fs::read(&pa).unwrap()).await.unwrap();
            format!("s3://{}/batch/a4.png", scope.bucket)
        } else {
            pa.display().to_string()
        };
        lines.push(serde_json::json!({"id": format!("p{i}"), "original": original, "modified": pb}).to_string());
        pairs.push((pa, pb));
    }
    lines.push("{not json".into());
    lines.push(serde_json::json!({"id": "no-modified", "original": pairs[0].0}).to_string());
    lines
        .push(serde_json::json!({"id": "missing", "original": pairs[0].0, "modified": "/nonexistent.png"}).to_string());
    lines.push(serde_json::json!({"id": "p1", "original": pairs[1].0, "modified": pairs[1].1}).to_string());
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = dir.path().join("pairs.captions.jsonl");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/blip2/tiny-a");
    let allowed = format!("[\"{}\"]", scope.bucket);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
            .args(["caption", "--max-new-tokens", "12", "--model", model])
            .args(args)
            .env("BLIP2IDC_S3__ALLOWED_BUCKETS", &allowed)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };

    let (code, text) = run(&["--batch", input.to_str().unwrap(), "--batch-size", "2"]);
    assert_eq!(code, Some(5), "some lines failed: {text}");
    assert!(text.contains("5 captioned, 4 failed, 0 already"), "{text}");
    let rows = read();
    assert_eq!(rows.len(), 9, "{rows:#?}");
    let by_id = |id: &str| rows.iter().filter(|r| r["id"] == id).cloned().collect::<Vec<_>>();
    for (i, (pa, pb)) in pairs.iter().enumerate() {
        let row = by_id(&format!("p{i}")).into_iter().find(|r| r["caption"].is_string()).expect("captioned");
        let one = std::process::Command::new(env!("CARGO_BIN_EXE_blip2idc"))
            .args(["caption", "--json", "--max-new-tokens", "12", "--model", model])
            .args([pa, pb])
            .output()
            .unwrap();
        let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
        assert_eq!((&row["caption"], &row["token_ids"]), (&one["caption"], &one["token_ids"]), "p{i}: {row}");
        assert!(row["model_version"].as_str().is_some_and(|v| !v.is_empty()), "{row}");
    }
    assert_eq!(by_id("p1").len(), 2, "the duplicate id is reported, not captioned twice");
    assert!(by_id("p1").iter().any(|r| r["error"] == "duplicate id"), "{rows:#?}");
    assert!(by_id("missing")[0]["kind"] == "object_missing", "{rows:#?}");
    assert!(by_id("no-modified")[0]["kind"] == "missing_field", "{rows:#?}");
    assert!(rows.iter().any(|r| r["id"].is_null() && r["kind"] == "malformed_json" && r["line"] == 6), "{rows:#?}");

    // An interrupted run: two captions written, the third cut short.
    let captioned: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"caption\""))
        .map(String::from)
        .collect();
    let cut = &captioned[2][..captioned[2].len() / 2];
    std::fs::write(&output, format!("{}\n{}\n{cut}", captioned[0], captioned[1])).unwrap();
    let (code, text) = run(&["--batch", input.to_str().unwrap(), "--output", output.to_str().unwrap()]);
    assert_eq!(code, Some(5), "{text}");
    assert!(text.contains("3 captioned, 4 failed, 2 already"), "{text}");
    let rows = read();
    let ids: Vec<&str> = rows.iter().filter(|r| r["caption"].is_string()).map(|r| r["id"].as_str().unwrap()).collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (5, 5), "every pair captioned once: {rows:#?}");

    // Everything captioned, failures fixed: nothing left to do, exit 0.
    let fixed = dir.path().join("fixed.jsonl");
    std::fs::write(&fixed, lines[..5].join("\n")).unwrap();
    let (code, text) = run(&["--batch", fixed.to_str().unwrap(), "-o", output.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0 captioned, 0 failed, 5 already"), "{text}");
}

/// Panics on inputs whose original image (top half of the stack) starts with a magenta row.
struct PanicsOnMagenta(common::TestCaptioner);

impl blip2idc::caption::Captioner for PanicsOnMagenta {
    fn model_version(&self) -> &str {
        self.0.model_version()
    }
    fn processor(&self) -> &blip2idc::model::preprocess::ImageProcessorConfig {
        self.0.processor()
    }
    fn caption_batch(&mut self, pixel_values: &[&[f32]]) -> anyhow::Result<Vec<blip2idc::caption::Caption>> {
        let w = self.0.processor.width as usize;
        let plane = w * self.0.processor.height as usize;
        for pv in pixel_values {
            // Normalised magenta: R ≈ +1.93, G ≈ -1.75.
            if pv[..w].iter().all(|&r| r > 1.8) && pv[plane..plane + w].iter().all(|&g| g < -1.6) {
                panic!("poison pixels");
            }
        }
        self.0.caption_batch(pixel_values)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_while_captioning_dead_letters_that_event_and_the_service_goes_on() {
    let mut scope = Scope::new("panic").await;
    scope.cfg.dlq.breaker_max_ratio = 0.95;
    scope.cfg.pipeline.max_batch_size = 4;
    scope.cfg.pipeline.max_batch_wait = Duration::from_millis(200);
    let s3 = scope.s3().await;
    let magenta = image::RgbImage::from_pixel(48, 48, image::Rgb([255, 0, 255]));
    blip2idc_dev::put(&s3, &scope.bucket, "poison.jpg", blip2idc_dev::jpeg(&magenta, 95)).await.unwrap();
    scope.seed(0..10, 48).await;
    for i in 0..3 {
        let id = format!("{}-poison{i}", scope.prefix);
        scope.publish_json(&id, &scope.event(&id, "poison.jpg", "0/b.jpg")).await;
    }
    scope.seed(10..16, 48).await;
    let factory: blip2idc::caption::CaptionerFactory = Box::new(|| {
        Ok(Box::new(PanicsOnMagenta(common::TestCaptioner {
            version: "test-captioner-v1".into(),
            processor: blip2idc::model::preprocess::ImageProcessorConfig::for_image_size(32),
            delay: Duration::ZERO,
        })) as Box<dyn blip2idc::caption::Captioner>)
    });
    let run = start(&scope.cfg, factory);
    scope.wait_for_captions(16, Duration::from_secs(60)).await;
    let letters = scope.dead_letters(3, Duration::from_secs(20));
    assert_eq!(letters.len(), 3, "{letters:?}");
    for l in &letters {
        assert_eq!(l.headers["error.kind"], "internal_error", "{:?}", l.headers);
        assert!(l.headers["error.message"].contains("panicked: poison pixels"), "{:?}", l.headers);
    }
    let summary = run.stop().await;
    assert!(summary.fatal.is_none() && !summary.drain_timed_out, "the captioner thread survived: {summary:?}");
    assert_eq!(scope.caption_count().await, 16);
    scope.assert_all_committed("poison events are dead-lettered, the rest stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_outage_holds_only_the_rejected_events() {
    let mut scope = Scope::new("dlqdown").await;
    // The dead-letter cluster (the same broker, behind a gate) is unreachable until the gate opens.
    let gate = common::Gate::closed(&scope.cfg.kafka.brokers).await;
    scope.cfg.dlq.brokers = Some(gate.addr.to_string());
    scope.cfg.s3.max_concurrency = 2;
    scope.cfg.dlq.breaker_max_ratio = 0.95;
    scope.cfg.dlq.retry_max_backoff = Duration::from_millis(300);
    // One partition (key "k"), in this order: two bad events (before the fix they held both fetch
    // slots while their dead letters were retried), then good ones.
    scope.publish_raw("k", b"not json").await;
    scope.publish_raw("k", b"{\"event_id\": 7}").await;
    let s3 = scope.s3().await;
    for i in 0..6u64 {
        let (a, b, _) = blip2idc_dev::synthetic_pair(i, 48);
        let (ka, kb) = (format!("{i}/a.jpg"), format!("{i}/b.jpg"));
        blip2idc_dev::put(&s3, &scope.bucket, &ka, blip2idc_dev::jpeg(&a, 90)).await.unwrap();
        blip2idc_dev::put(&s3, &scope.bucket, &kb, blip2idc_dev::jpeg(&b, 90)).await.unwrap();
        let id = format!("{}-{i}", scope.prefix);
        scope.publish_json("k", &scope.event(&id, &ka, &kb)).await;
    }
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    scope.wait_for_captions(6, Duration::from_secs(30)).await;
    // Stored, but nothing committed past the first event still waiting for its dead letter.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let k = &scope.cfg.kafka;
    let committed = blip2idc_dev::committed_offsets(&k.brokers, &k.group_id, &k.input_topic, 3).unwrap();
    assert!(committed.iter().all(|&c| c <= 0), "committed past a pending dead letter: {committed:?}");
    assert!(scope.dead_letters(1, Duration::from_secs(1)).is_empty());

    // The dead-letter cluster comes back: the pending dead letters are delivered, everything commits.
    gate.open();
    let letters = scope.dead_letters(2, Duration::from_secs(60));
    assert_eq!(letters.len(), 2, "{letters:?}");
    let summary = run.stop().await;
    assert!(summary.fatal.is_none() && !summary.drain_timed_out, "{summary:?}");
    scope.assert_all_committed("delivered dead letters let the offsets move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_that_times_out_stops_the_steps_commits_only_stored_events_and_exits_4() {
    let mut scope = Scope::new("draintimeout").await;
    scope.cfg.shutdown.drain_timeout = Duration::from_millis(300);
    scope.cfg.pipeline.max_batch_size = 2;
    scope.seed(0..12, 40).await;
    // Three seconds per batch of two: most events are still in flight when the stop comes (15 s of
    // captioning left), far more than the stop may take.
    let run = start(&scope.cfg, test_captioner(Duration::from_secs(3)));
    scope.wait_for_captions(1, Duration::from_secs(60)).await;
    let asked = std::time::Instant::now();
    let summary = run.stop().await;
    let took = asked.elapsed();
    assert!(summary.drain_timed_out, "{summary:?}");
    assert_eq!(summary.exit_code(), 4, "a drain that timed out exits non-zero");
    assert!(took < Duration::from_secs(10), "the stop waited {took:?} for in-flight work");
    let stored = scope.caption_count().await;
    assert!(stored < 12, "all {stored} stored: nothing was in flight, the test proves nothing");
    // The steps were stopped before the final commit: nothing is stored afterwards.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(scope.caption_count().await, stored, "a step kept storing after the final commit");
    let committed = scope.committed_total();
    assert!(committed <= stored, "committed {committed} events but only {stored} were stored");
    // The rest is redelivered to the next run and nothing is lost.
    let run = start(&scope.cfg, test_captioner(Duration::ZERO));
    scope.wait_for_captions(12, Duration::from_secs(60)).await;
    let summary = run.stop().await;
    assert_eq!(summary.exit_code(), 0, "{summary:?}");
    scope.assert_all_committed("the second run finished the rest");
}
