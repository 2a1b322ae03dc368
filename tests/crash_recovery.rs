//! The real `blip2idc serve` binary, with the tiny random BLIP-2 checkpoint, killed with SIGKILL and
//! restarted: every event is stored exactly once, and nothing is committed before it is stored.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Scope;

/// Writes a config file for the binary with this scope's topics, group and bucket.
fn config_file(scope: &Scope, dir: &Path, commit_interval: &str) -> PathBuf {
    let c = &scope.cfg;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2/tiny-a");
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2/tiny-a-adapter");
    let toml = format!(
        r#"
[kafka]
input_topic = "{input}"
dlq_topic = "{dlq}"
group_id = "{group}"
commit_interval = "{commit_interval}"
session_timeout = "10s"
[s3]
allowed_buckets = ["{bucket}"]
[model]
checkpoint = "{model}"
adapter = "{adapter}"
max_new_tokens = 20
[pipeline]
max_batch_size = 2
max_in_flight = 8
max_batch_wait = "10ms"
[admin]
listen = "127.0.0.1:0"
[shutdown]
drain_timeout = "15s"
[log]
format = "json"
"#,
        input = c.kafka.input_topic,
        dlq = c.kafka.dlq_topic,
        group = c.kafka.group_id,
        bucket = scope.bucket,
        model = model.display(),
        adapter = adapter.display(),
    );
    let path = dir.join("blip2idc.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn serve(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_blip2idc"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting blip2idc serve")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} failed");
}

async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "blip2idc did not exit within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_rows_at_least(scope: &Scope, n: i64, timeout: Duration, log: &Path) {
    let deadline = Instant::now() + timeout;
    while scope.caption_count().await < n {
        if Instant::now() > deadline {
            panic!(
                "fewer than {n} captions after {timeout:?}; service log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_stores_every_event_exactly_once() {
    let scope = Scope::new("sigkill").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&scope, dir.path(), "200ms");
    let log = dir.path().join("serve.log");
    // 120 good pairs with 22 bad events among them (one after every fifth pair).
    for chunk in 0..24u64 {
        scope.seed(chunk * 5..chunk * 5 + 5, 40).await;
        if chunk < 22 {
            scope.publish_raw(&format!("bad{chunk}"), format!("not json {chunk}").as_bytes()).await;
        }
    }

    let mut first = serve(&config, &log);
    wait_rows_at_least(&scope, 10, Duration::from_secs(120), &log).await;
    signal(&first, "-KILL");
    wait_exit(&mut first, Duration::from_secs(10)).await;
    let stored_before = scope.caption_count().await;
    assert!(stored_before < 120, "the kill must land mid-stream (all {stored_before} were already stored)");
    let dead_before = scope.dead_letters(22, Duration::from_secs(2)).len() as i64;
    assert!(
        scope.committed_total() <= stored_before + dead_before,
        "nothing is committed before it is stored or dead-lettered"
    );

    let mut second = serve(&config, &log);
    scope.wait_for_captions(120, Duration::from_secs(180)).await;
    signal(&second, "-TERM");
    let status = wait_exit(&mut second, Duration::from_secs(60)).await;
    assert!(status.success(), "graceful exit after SIGTERM: {status}");
    assert_eq!(scope.caption_count().await, 120, "exactly one row per event");
    assert_eq!(scope.captioned_events().await, 120);
    assert_eq!(scope.committed_total(), 142, "everything stored or dead-lettered is committed at shutdown");
    scope.assert_all_committed("everything stored is committed at shutdown");
    // Every bad event is dead-lettered; those delivered but not committed when the process died are
    // delivered again after the restart (at-least-once): the origin headers tell the copies apart.
    let letters = scope.dead_letters(1000, Duration::from_secs(5));
    let origins: std::collections::BTreeSet<(String, String)> =
        letters.iter().map(|l| (l.headers["source.partition"].clone(), l.headers["source.offset"].clone())).collect();
    assert_eq!(origins.len(), 22, "every bad event dead-lettered");
    eprintln!("DLQ duplicates after one SIGKILL: {} of 22 bad events", letters.len() - origins.len());
    let version: String =
        sqlx::query_scalar("SELECT DISTINCT model_version FROM captions WHERE event_id LIKE $1 || '-%'")
            .bind(&scope.prefix)
            .fetch_one(scope.store().pool())
            .await
            .unwrap();
    assert!(version.starts_with("tiny-a+tiny-a-adapter@"), "{version}");
}

/// `blip2idc_captions_stored_total` of the service whose (JSON) log is `log`, read from its admin
/// endpoint (the address is in the log); 0 until both are there.
fn stored_counter(log: &Path) -> u64 {
    use std::io::{Read, Write};
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.contains("admin endpoints")) else { return 0 };
    let Some(addr) =
        serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["addr"].as_str().map(String::from))
    else {
        return 0;
    };
    let Ok(mut conn) = std::net::TcpStream::connect(&addr) else { return 0 };
    let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.lines()
        .find(|l| l.starts_with("blip2idc_captions_stored_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_before_any_commit_redelivers_without_duplicate_rows() {
    let scope = Scope::new("nocommit").await;
    let dir = tempfile::tempdir().unwrap();
    // No periodic commit happens within the test: only stores.
    let config = config_file(&scope, dir.path(), "1h");
    let log = dir.path().join("serve.log");
    scope.seed(0..20, 40).await;

    let mut first = serve(&config, &log);
    scope.wait_for_captions(20, Duration::from_secs(120)).await;
    signal(&first, "-KILL");
    wait_exit(&mut first, Duration::from_secs(10)).await;
    assert_eq!(scope.committed_total(), 0, "killed before its first commit");

    // Every event is redelivered and stored again (an idempotent upsert); the graceful stop commits.
    // The killed member's session must expire before the group hands its partitions out again.
    let log2 = dir.path().join("serve2.log");
    let mut second = serve(&config, &log2);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log2).unwrap_or_default().contains("partitions assigned") {
        assert!(Instant::now() < deadline, "the restarted service never got its partitions");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop it once it has handled all 20 (its stored counter; the rows themselves exist already).
    while stored_counter(&log2) < 20 {
        assert!(Instant::now() < deadline, "the restarted service never re-stored the 20 events");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&second, "-TERM");
    let status = wait_exit(&mut second, Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        scope.committed_total(),
        20,
        "all redelivered events were handled and committed; log:\n{}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    assert_eq!(scope.caption_count().await, 20, "redelivery made no second rows");
    scope.assert_all_committed("all redelivered events were committed");
}

/// Secrets set in every place the service reads them from — the database URL (a password with `/`,
/// `@` and `:`), `kafka.properties`, the AWS secret key — never appear in any command's output or in
/// the service's log, even at debug level and in errors about unreachable or unparsable URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_command_output() {
    let scope = Scope::new("secrets").await;
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let role = format!("secrets_{pid}_{}", scope.prefix.len());
    let password = format!("pw/{pid}@se:cret");
    let store = scope.store();
    let create = format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'");
    sqlx::query(sqlx::AssertSqlSafe(create)).execute(store.pool()).await.unwrap();
    let encoded = password.replace('/', "%2F").replace('@', "%40").replace(':', "%3A");
    let url = format!("postgres://{role}:{encoded}@127.0.0.1:5432/blip2idc?application_name=secrets");
    let kafka_password = format!("kafka-pw-{pid}");
    let aws_secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    let config = config_file(&scope, dir.path(), "200ms");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "[kafka.properties]\n\"sasl.username\" = \"alice\"\n\"sasl.password\" = \"{kafka_password}\"\n"
    ));
    std::fs::write(&config, toml).unwrap();

    let mut shown = String::new();
    let mut run = |args: &[&str], database_url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_blip2idc"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", database_url)
            .env("BLIP2IDC_LOG__FILTER", "debug")
            .env("BLIP2IDC_DATABASE__CONNECT_TIMEOUT", "2s")
            .output()
            .unwrap();
        shown.push_str(&String::from_utf8_lossy(&out.stdout));
        shown.push_str(&String::from_utf8_lossy(&out.stderr));
        out.status.success()
    };
    assert!(run(&["config"], &url));
    assert!(run(&["migrate"], &url));
    assert!(!run(&["migrate"], &url.replace("127.0.0.1:5432", "127.0.0.1:1")), "unreachable database");
    let unparsable = format!("postgres://{role}:{password}@127.0.0.1:5432/blip2idc?x=%zz");
    run(&["migrate"], &unparsable);

    // The service itself, at debug level, until it has joined the group, then a graceful stop.
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_blip2idc"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &url)
        .env("BLIP2IDC_LOG__FILTER", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    scope.seed(0..2, 40).await;
    wait_rows_at_least(&scope, 2, Duration::from_secs(60), &log).await;
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(30)).await.success());
    shown.push_str(&std::fs::read_to_string(&log).unwrap());

    assert!(shown.contains("***"), "the redacted forms are shown");
    for secret in [password.as_str(), encoded.as_str(), "se:cret", "se%3Acret", &kafka_password, &aws_secret] {
        if let Some(at) = shown.find(secret) {
            let context = &shown[at.saturating_sub(200)..(at + 200).min(shown.len())];
            panic!("secret {secret:?} shown:\n{context}");
        }
    }
    let drop = format!("DROP ROLE {role}");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(store.pool()).await.unwrap();
}
