//! PostgreSQL stopped mid-run and started again: the pipeline retries, nothing is lost, nothing is
//! dead-lettered, nothing is committed before it is stored. (Its own test binary: stopping the shared
//! PostgreSQL must not disturb other tests, and cargo runs test binaries one at a time.)

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use blip2idc::health::Health;
use blip2idc::pipeline;
use common::{test_captioner, Scope};
use tokio_util::sync::CancellationToken;

fn pg_version() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian PostgreSQL (deploy/local/up.sh installs it)")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
    v.pop().unwrap()
}

fn pg_ctl(action: &str) {
    assert!(try_pg_ctl(action), "pg_ctlcluster {action} failed");
}

/// `pg_ctlcluster <version> main <action>` (through sudo when not root); true on success.
fn try_pg_ctl(action: &str) -> bool {
    let mut cmd = if is_root() { Command::new("pg_ctlcluster") } else { Command::new("sudo") };
    if !is_root() {
        cmd.arg("pg_ctlcluster");
    }
    let ok = cmd.args([pg_version().as_str(), "main", action, "-m", "fast"]).status().is_ok_and(|s| s.success());
    ok || action == "start" && pg_ready()
}

fn pg_ready() -> bool {
    Command::new("pg_isready").args(["-h", "127.0.0.1", "-p", "5432", "-q"]).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
            .unwrap_or(false)
}

/// Starts PostgreSQL again even when the test fails half-way.
struct RestartOnDrop;
impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        if !pg_ready() {
            try_pg_ctl("start"); // no assert: this may run while the test is already panicking
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_mid_run_loses_nothing() {
    let mut scope = Scope::new("pgdown").await;
    scope.cfg.pipeline.max_batch_size = 4;
    scope.cfg.database.retry_max_backoff = Duration::from_millis(300);
    scope.seed(0..30, 40).await;

    let cfg = scope.cfg.clone();
    let shutdown = CancellationToken::new();
    let health = Arc::new(Health::default());
    let (s, h) = (shutdown.clone(), health.clone());
    let task = tokio::spawn(async move { pipeline::run(&cfg, test_captioner(Duration::ZERO), h, s).await });
    scope.wait_for_captions(30, Duration::from_secs(60)).await;

    let _guard = RestartOnDrop;
    pg_ctl("stop");
    assert!(!pg_ready());
    // Events arrive while the database is down: they are fetched and captioned, then wait for the store.
    scope.seed(30..60, 40).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed_during_outage = scope.committed_total();
    assert!(committed_during_outage <= 30, "committed {committed_during_outage} while only 30 could be stored");
    pg_ctl("start");
    for _ in 0..100 {
        if pg_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    scope.wait_for_captions(60, Duration::from_secs(90)).await;
    shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(60), task).await.unwrap().unwrap().unwrap();
    assert!(summary.fatal.is_none(), "{summary:?}");
    assert_eq!(scope.caption_count().await, 60, "nothing lost, nothing doubled");
    assert_eq!(scope.committed_total(), 60);
    scope.assert_all_committed("everything is committed after the outage");
    assert!(scope.dead_letters(1, Duration::from_secs(3)).is_empty(), "a database outage is not the events' fault");
}
