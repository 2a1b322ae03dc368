//! Per-object S3 errors and the retry budget (issue 11, items 4 and 5), against a real S3 server:
//! the project's s3s-fs server on a port of its own, answering for keys under `_state/...` as S3
//! answers for objects denied by a policy, archived, SSE-C encrypted, in a bucket that moved, or
//! throttled on every attempt (`devtools::OBJECT_STATES`).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blip2idc::health::Health;
use blip2idc::pipeline;
use blip2idc_dev as devtools;
use common::{test_captioner, Scope};
use tokio_util::sync::CancellationToken;

/// Uploads the good pair `i` (`{i}/a.jpg`, `{i}/b.jpg`) and one good JPEG under every state prefix.
async fn upload(scope: &Scope, good: std::ops::Range<u64>) {
    let s3 = scope.s3().await;
    for i in good {
        let (a, b, _) = devtools::synthetic_pair(i, 48);
        devtools::put(&s3, &scope.bucket, &format!("{i}/a.jpg"), devtools::jpeg(&a, 90)).await.unwrap();
        devtools::put(&s3, &scope.bucket, &format!("{i}/b.jpg"), devtools::jpeg(&b, 90)).await.unwrap();
    }
    let (a, _, _) = devtools::synthetic_pair(99, 48);
    for (prefix, _) in devtools::OBJECT_STATES {
        devtools::put(&s3, &scope.bucket, &format!("{prefix}x.jpg"), devtools::jpeg(&a, 90)).await.unwrap();
    }
}

/// Publishes the pair event `id` on one partition (key "k": consumed in publication order).
async fn publish(scope: &Scope, id: &str, a: &str, b: &str) {
    scope.publish_json("k", &scope.event(&format!("{}-{id}", scope.prefix), a, b)).await;
}

fn start(
    scope: &Scope,
) -> (CancellationToken, Arc<Health>, tokio::task::JoinHandle<anyhow::Result<pipeline::RunSummary>>) {
    let (cfg, shutdown, health) = (scope.cfg.clone(), CancellationToken::new(), Arc::new(Health::default()));
    let (s, h) = (shutdown.clone(), health.clone());
    let task = tokio::spawn(async move { pipeline::run(&cfg, test_captioner(Duration::ZERO), h, s).await });
    (shutdown, health, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_object_errors_are_dead_lettered_at_once_and_good_events_flow() {
    let mut scope = Scope::new("objerr").await;
    let _s3 = scope.own_s3_server(true).await;
    // Two fetch slots and a retry budget far beyond the test: before the fix, the first two of these
    // events were retried forever and nothing behind them moved.
    scope.cfg.s3.max_concurrency = 2;
    scope.cfg.s3.retry_timeout = Duration::from_secs(120);
    scope.cfg.dlq.breaker_max_ratio = 0.95;
    upload(&scope, 0..6).await;
    let bad = [
        ("forbidden", "0/a.jpg", "_state/forbidden/x.jpg", "object_forbidden"),
        ("archived", "0/a.jpg", "_state/archived/x.jpg", "object_unavailable"),
        ("sse-c", "_state/sse-c/x.jpg", "0/b.jpg", "object_unavailable"),
        ("moved", "0/a.jpg", "_state/moved/x.jpg", "object_unavailable"),
        // Rejected at once although its sibling is throttled (and would be retried for 120 s).
        ("sibling", "_state/forbidden/x.jpg", "_state/throttled/x.jpg", "object_forbidden"),
    ];
    for (id, a, b, _) in bad {
        publish(&scope, id, a, b).await;
    }
    for i in 0..6 {
        publish(&scope, &i.to_string(), &format!("{i}/a.jpg"), &format!("{i}/b.jpg")).await;
    }
    let started = Instant::now();
    let (shutdown, _health, task) = start(&scope);
    scope.wait_for_captions(6, Duration::from_secs(60)).await;
    let letters = scope.dead_letters(bad.len(), Duration::from_secs(30));
    let took = started.elapsed();
    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    for (id, _, _, kind) in bad {
        let want = format!("\"event_id\":\"{}-{id}\"", scope.prefix);
        let l = letters.iter().find(|l| String::from_utf8_lossy(&l.payload).contains(&want)).expect(id);
        assert_eq!(l.headers["error.kind"], kind, "{id}: {:?}", l.headers);
        assert!(l.headers["error.message"].contains("_state/"), "{id}: {:?}", l.headers);
    }
    assert!(took < Duration::from_secs(60), "took {took:?}: something waited for a retry budget");
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.fatal.is_none() && !summary.drain_timed_out, "{summary:?}");
    scope.assert_all_committed("every event is stored or dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_failure_has_a_retry_budget_and_the_stall_shows_meanwhile() {
    let mut scope = Scope::new("budget").await;
    let _s3 = scope.own_s3_server(true).await;
    scope.cfg.s3.max_concurrency = 2;
    scope.cfg.s3.retry_timeout = Duration::from_secs(5);
    scope.cfg.pipeline.stall_timeout = Duration::from_secs(2);
    scope.cfg.dlq.breaker_max_ratio = 0.95;
    upload(&scope, 0..4).await;
    // Both fetch slots go to objects throttled on every attempt; the good events queue behind them.
    for id in ["t1", "t2"] {
        publish(&scope, id, "0/a.jpg", "_state/throttled/x.jpg").await;
    }
    for i in 0..4 {
        publish(&scope, &i.to_string(), &format!("{i}/a.jpg"), &format!("{i}/b.jpg")).await;
    }
    let (shutdown, health, task) = start(&scope);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_stalled = false;
    while scope.caption_count().await < 4 {
        seen_stalled |= health.stalled.load(Ordering::Relaxed);
        assert!(Instant::now() < deadline, "the good events never got through");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_stalled, "nothing finished for longer than pipeline.stall_timeout, but no stall was reported");
    let letters = scope.dead_letters(2, Duration::from_secs(30));
    assert_eq!(letters.len(), 2, "{letters:?}");
    for l in &letters {
        assert_eq!(l.headers["error.kind"], "fetch_failed", "{:?}", l.headers);
        assert!(l.headers["error.message"].contains("s3.retry_timeout"), "{:?}", l.headers);
    }
    // Progress clears the stall.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!health.stalled.load(Ordering::Relaxed), "still reported stalled after the events finished");
    shutdown.cancel();
    let summary = task.await.unwrap().unwrap();
    assert!(summary.fatal.is_none() && !summary.drain_timed_out, "{summary:?}");
    scope.assert_all_committed("every event is stored or dead-lettered");
}
