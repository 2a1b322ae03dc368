//! The operators' side (issue 18): the manifests validate (`kubernetes-validate --strict`, `yamllint`),
//! the alert rules load and pass their unit tests (`promtool`) and use only exported metrics, and the
//! registry and dead-letter commands work end to end on the local stack: `blip2idc models
//! list|promote|rollback` against a running consumer that follows them, `blip2idc dlq replay` after a
//! fix. The Grafana dashboards (`deploy/grafana/`): every PromQL query parses (`promtool`) and uses
//! exported metrics and labels, every SQL query runs on the migrated schema and returns rows, every
//! data source a panel names is provisioned. The tools come from `deploy/local/up.sh` (Debian's
//! prometheus for promtool; pip's kubernetes-validate and yamllint).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blip2idc::health::Health;
use blip2idc::store::ModelVersion;
use common::{test_captioner, Scope};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool the local stack installs (`python3 -m MODULE` for the pip ones: their scripts may have
/// no pyenv shim); a missing tool fails with how to get it.
fn tool(name: &str, args: &[&str]) -> Output {
    let module = match name {
        "kubernetes-validate" => Some("kubernetes_validate"),
        "yamllint" => Some("yamllint"),
        _ => None,
    };
    let mut cmd = match module {
        Some(m) => {
            let mut c = Command::new("python3");
            c.args(["-m", m]);
            c
        }
        None => Command::new(name),
    };
    let out = cmd.args(args).current_dir(repo()).output().unwrap_or_else(|e| {
        panic!("{name} is needed ({e}): `bash deploy/local/up.sh` installs it (promtool: apt prometheus; others: pip)")
    });
    if module.is_some() && String::from_utf8_lossy(&out.stderr).contains("No module named") {
        panic!("{name} is needed: `bash deploy/local/up.sh` installs it with pip");
    }
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Custom resources whose schemas kubernetes-validate does not ship: skipped by name, nothing else.
const CUSTOM_RESOURCES: [&str; 1] = ["ScaledObject"];

#[test]
fn the_manifests_validate() {
    let files: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(repo()).unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let o = tool("kubernetes-validate", &args);
    let out = text(&o);
    assert!(o.status.success(), "kubernetes-validate:\n{out}");
    for line in out.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            CUSTOM_RESOURCES.iter().any(|kind| line.contains(&format!("Couldn't find schema for kind {kind} "))),
            "unexpected kubernetes-validate output: {line}"
        );
    }
    for kind in ["Deployment", "CronJob", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"] {
        assert!(out.contains(&format!("passed for resource {}/", kind.to_lowercase())), "no {kind} validated:\n{out}");
    }
    let o =
        tool("yamllint", &["--strict", "-c", "deploy/.yamllint", "deploy/k8s", "deploy/prometheus", "deploy/grafana"]);
    assert!(o.status.success(), "yamllint:\n{}", text(&o));
}

#[test]
fn the_alert_rules_load_and_pass_their_tests() {
    let o = tool("promtool", &["check", "rules", "deploy/prometheus/alerts.yaml"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tool("promtool", &["test", "rules", "deploy/prometheus/alerts.test.yaml"]);
    assert!(o.status.success() && text(&o).contains("SUCCESS"), "{}", text(&o));
}

/// The metric names the service exports (the constants of `src/metrics.rs`).
fn exported_metrics() -> Vec<String> {
    let exported: Vec<String> = std::fs::read_to_string(repo().join("src/metrics.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(exported.len() > 20, "{exported:?}");
    exported
}

/// Fails unless every `blip2idc_*` name in `text` (from `what`) is exported; histograms are exported
/// as `_bucket`/`_sum`/`_count` of the described name.
fn assert_exported(text: &str, what: &str, exported: &[String]) {
    let mut used: Vec<&str> = text
        .match_indices("blip2idc_")
        .map(|(i, _)| {
            let rest = &text[i..];
            &rest[..rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())]
        })
        .collect();
    used.sort();
    used.dedup();
    for m in &used {
        let base = m.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(exported.iter().any(|e| e == m || e == base), "{what} uses {m}, which /metrics does not export");
    }
}

/// Every `blip2idc_*` metric an alert or the scaler uses is one the service exports.
#[test]
fn alerts_and_scalers_use_exported_metrics() {
    let exported = exported_metrics();
    for file in ["deploy/prometheus/alerts.yaml", "deploy/k8s/autoscaling-hpa.yaml"] {
        assert_exported(&std::fs::read_to_string(repo().join(file)).unwrap(), file, &exported);
    }
}

/// The dashboards' panels: (file, panel title, data source uid, query) for every target.
fn dashboard_queries() -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let uid = t["datasource"]["uid"].as_str().or(p["datasource"]["uid"].as_str()).unwrap().to_owned();
                let q = t["expr"].as_str().or(t["rawSql"].as_str()).expect("a query").to_owned();
                out.push((file.clone(), p["title"].as_str().unwrap().to_owned(), uid, q));
            }
        }
    }
    assert!(out.len() > 25, "{} queries", out.len());
    out
}

/// The operators' dashboard: every PromQL query parses (as a recording rule, `promtool check rules`),
/// names only exported metrics, and groups only by labels the service sets; every panel's data source
/// is provisioned.
#[test]
fn dashboards_query_exported_metrics_with_valid_promql() {
    let exported = exported_metrics();
    let provisioned =
        std::fs::read_to_string(repo().join("deploy/grafana/provisioning/datasources/blip2idc.yaml")).unwrap();
    // The labels the service puts on its metrics (`"name" => value` in metrics! calls), and `le`.
    let mut labels = vec!["le".to_owned()];
    for file in walk(&repo().join("src")) {
        let code = std::fs::read_to_string(&file).unwrap();
        for (i, _) in code.match_indices("\" =>") {
            let start = code[..i].rfind('"').unwrap() + 1;
            labels.push(code[start..i].to_owned());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut promql = 0;
    for (i, (file, title, uid, q)) in dashboard_queries().into_iter().enumerate() {
        assert!(provisioned.contains(&format!("uid: {uid}")), "{file} / {title}: data source {uid} is not provisioned");
        if uid != "blip2idc-prometheus" {
            continue;
        }
        promql += 1;
        assert_exported(&q, &format!("{file} / {title}"), &exported);
        for (j, _) in q.match_indices("by (") {
            let list = &q[j + 4..j + 4 + q[j + 4..].find(')').unwrap()];
            for label in list.split(',').map(str::trim) {
                assert!(labels.iter().any(|l| l == label), "{file} / {title}: no metric has the label {label}");
            }
        }
        let expr = q.replace("$__rate_interval", "5m");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: '{}'\n", expr.replace('\'', "''")));
    }
    assert!(promql >= 20, "{promql} PromQL queries");
    let path = dir.path().join("dashboards.rules.yaml");
    std::fs::write(&path, &rules).unwrap();
    let o = tool("promtool", &["check", "rules", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{rules}", text(&o));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The analysts' dashboard: every SQL query (Grafana's time macros replaced by a 30-day range) runs
/// on a freshly migrated database holding a few rows of every table it reads, and returns rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_sql_runs_on_the_migrated_schema() {
    let mut scope = Scope::new("dashboards").await;
    scope.fresh_database().await;
    let store = scope.store();
    store.migrate().await.unwrap();
    let pool = store.pool();
    let seed = "
        INSERT INTO model_versions (version, base_model, promoted_at) VALUES ('v1', 'b', now() - interval '2 days'), ('v2', 'b', now());
        INSERT INTO model_promotions (version, base_model, action, previous_version, promoted_by, reason)
            VALUES ('v2', 'b', 'promote', 'v1', 'ops', 'better CIDEr-D');
        INSERT INTO image_pairs (event_id, original_uri, republished_uri, source_url, observed_at, kafka_topic, kafka_partition, kafka_offset)
            VALUES ('e1', 's3://b/a', 's3://b/b', 'https://news.example/x', now() - interval '1 day', 't', 0, 1),
                   ('e2', 's3://b/c', 's3://b/d', NULL, NULL, 't', 0, 2);
        INSERT INTO captions (event_id, model_version, caption, inference_seconds, end_to_end_seconds, batch_size,
                              changed, regions, actions, model_skipped)
            VALUES ('e1', 'v1', 'a logo was removed', 0.1, 0.5, 4, NULL, NULL, '{}', false),
                   ('e1', 'v2', 'the logo was removed', 0.1, 0.4, 4, true, '[[10, 20, 110, 80]]',
                    '{c2pa.edited,c2pa.removed,c2pa.transcoded}', false),
                   ('e2', 'v2', 'no visible change', 0, 0.1, 0, false, '[]', '{c2pa.resized,c2pa.transcoded}', true);
        INSERT INTO labels (original_uri, modified_uri, caption, category, split, labeled_by, event_id)
            VALUES ('s3://b/a', 's3://b/b', 'the logo was removed', 'remove', 'train', 'ana', 'e1'),
                   ('s3://b/c', 's3://b/d', 'a caption was added', NULL, NULL, 'bo', 'e2');
        INSERT INTO training_runs (status, seed, base_model, candidate_version, promoted, n_new_labels, n_train, n_holdout, decision)
            VALUES ('succeeded', 1, 'b', 'v2', true, 2, 1, 1, 'promoted: holdout CIDEr-D rose');
    ";
    sqlx::raw_sql(seed).execute(pool).await.unwrap();
    let mut sql = 0;
    for (file, title, uid, q) in dashboard_queries() {
        if uid != "blip2idc-postgres" {
            continue;
        }
        sql += 1;
        let range = "now() - interval '30 days' AND now()";
        let mut q = q.replace("$__timeFrom()", "(now() - interval '30 days')").replace("$__timeTo()", "now()");
        while let Some(i) = q.find("$__timeFilter(") {
            let end = i + q[i..].find(')').unwrap();
            let column = q[i + "$__timeFilter(".len()..end].to_owned();
            q.replace_range(i..=end, &format!("{column} BETWEEN {range}"));
        }
        assert!(!q.contains("$__"), "{file} / {title}: a Grafana macro the test does not know: {q}");
        // The dashboard's own queries, from the repository (Grafana runs them as they are).
        let rows = sqlx::query(sqlx::AssertSqlSafe(q.clone()))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{file} / {title}: {e}\n{q}"));
        assert!(!rows.is_empty(), "{file} / {title}: no rows from the seeded database\n{q}");
    }
    assert!(sql >= 9, "{sql} SQL queries");
}

/// The binary with a config file for this scope (database: `DATABASE_URL` of the scope).
fn blip2idc(scope: &Scope, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blip2idc"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("DATABASE_URL", scope.cfg.database.url.expose())
        .env("BLIP2IDC_OPERATOR", "")
        .output()
        .unwrap()
}

fn config_file(scope: &Scope, dir: &Path) -> PathBuf {
    let c = &scope.cfg;
    let toml = format!(
        "[kafka]\ninput_topic = \"{}\"\ndlq_topic = \"{}\"\ngroup_id = \"{}\"\n[s3]\nallowed_buckets = [\"{}\"]\n\
         [model]\ncheckpoint = \"{}\"\nreload_poll_interval = \"{}ms\"\n",
        c.kafka.input_topic,
        c.kafka.dlq_topic,
        c.kafka.group_id,
        scope.bucket,
        c.model.checkpoint,
        c.model.reload_poll_interval.as_millis().max(1),
    );
    let path = dir.join("blip2idc.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// `models list --json`: the number of consumers reporting `version` loaded, and whether it is promoted.
fn listed(scope: &Scope, config: &Path, version: &str) -> (i64, bool) {
    let list = json(&blip2idc(scope, config, &["models", "list", "--json"]));
    let v = list["versions"].as_array().unwrap().iter().find(|v| v["version"] == version).cloned();
    v.map_or((0, false), |v| (v["consumers"].as_i64().unwrap(), v["promoted"].as_bool().unwrap()))
}

/// Waits until the running consumer reports `version` loaded and captions new events with it.
async fn wait_for_switch(scope: &Scope, config: &Path, version: &str, next_event: &mut u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while listed(scope, config, version) != (1, true) {
        assert!(Instant::now() < deadline, "no consumer reported {version} loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = scope.seed(*next_event..*next_event + 1, 48).await;
    *next_event += 1;
    loop {
        let by: Option<String> = sqlx::query_scalar("SELECT model_version FROM captions WHERE event_id = $1")
            .bind(&ids[0])
            .fetch_optional(scope.store().pool())
            .await
            .unwrap();
        if let Some(by) = by {
            assert_eq!(by, version, "the event after the switch was captioned by {by}");
            return;
        }
        assert!(Instant::now() < deadline, "{} was not captioned", ids[0]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_promote_and_rollback_switch_a_running_consumer() {
    let mut scope = Scope::new("models").await;
    scope.fresh_database().await;
    let fixtures = repo().join("tests/fixtures/blip2");
    scope.cfg.model.checkpoint = fixtures.join("tiny-a").to_string_lossy().into_owned();
    scope.cfg.model.adapter = Some(fixtures.join("tiny-a-adapter").to_string_lossy().into_owned());
    scope.cfg.model.version = Some("start".into());
    scope.cfg.model.max_new_tokens = 8;
    scope.cfg.model.reload_poll_interval = Duration::from_millis(300);
    let work = tempfile::tempdir().unwrap();
    scope.cfg.retrain.work_dir = work.path().to_owned();
    let config = config_file(&scope, work.path());
    let store = scope.store();

    // Two versions with adapters in S3, one without any.
    let adapters = blip2idc::adapters::AdapterStore::new(scope.s3().await, &scope.cfg.s3);
    for (version, dir, cider) in [("v1", "tiny-a-adapter", 0.41), ("v2", "tiny-a-rust-adapter", 0.47)] {
        let uri = format!("s3://{}/adapters/{version}/", scope.bucket);
        adapters.upload(&fixtures.join(dir), &uri).await.unwrap();
        let m = ModelVersion {
            version: version.into(),
            base_model: scope.cfg.model.checkpoint.clone(),
            adapter_uri: Some(uri),
        };
        store.register_candidate(&m, &serde_json::json!({"holdout": {"cider": cider, "bleu4": 0.2}})).await.unwrap();
    }
    let bare =
        ModelVersion { version: "bare".into(), base_model: scope.cfg.model.checkpoint.clone(), adapter_uri: None };
    store.register_model_version(&bare).await.unwrap();

    // Nothing promoted yet: nothing to roll back to.
    let o = blip2idc(&scope, &config, &["models", "rollback", "--reason", "try"]);
    assert!(!o.status.success() && text(&o).contains("nothing to roll back to"), "{}", text(&o));

    // A running consumer.
    let cfg = scope.cfg.clone();
    let (shutdown, health) = (CancellationToken::new(), Arc::new(Health::default()));
    let factory = blip2idc::caption::blip2idc::factory(&cfg.model).unwrap();
    let s = shutdown.clone();
    let service = tokio::spawn(async move { blip2idc::pipeline::run(&cfg, factory, health, s).await });
    let mut next = 0;
    wait_until(|| async { listed(&scope, &config, "start").0 == 1 }, "the consumer reports its version").await;

    // Refused promotions say why and change nothing.
    let o = blip2idc(&scope, &config, &["models", "promote", "v9", "--reason", "typo"]);
    assert!(!o.status.success() && text(&o).contains("v9 is not a registered version"), "{}", text(&o));
    let o = blip2idc(&scope, &config, &["models", "promote", "bare", "--reason", "no adapter"]);
    assert!(!o.status.success() && text(&o).contains("bare has no adapter"), "{}", text(&o));
    let o = blip2idc(&scope, &config, &["models", "promote", "v1"]);
    assert!(!o.status.success() && text(&o).contains("--reason"), "a reason is required: {}", text(&o));

    // Promote v1, then v2, then roll back: the consumer follows each within seconds.
    let o = blip2idc(&scope, &config, &["models", "promote", "v1", "--reason", "first adapter", "--by", "alice"]);
    assert!(o.status.success() && text(&o).contains("promoted v1 (was none)"), "{}", text(&o));
    wait_for_switch(&scope, &config, "v1", &mut next).await;
    let o = blip2idc(&scope, &config, &["models", "promote", "v2", "--reason", "higher CIDEr-D", "--by", "alice"]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for_switch(&scope, &config, "v2", &mut next).await;
    assert_eq!(listed(&scope, &config, "v1"), (0, false));
    let o = blip2idc(&scope, &config, &["models", "rollback", "--reason", "v2 hallucinates logos", "--by", "bob"]);
    assert!(o.status.success() && text(&o).contains("rolled back to v1 (was v2)"), "{}", text(&o));
    wait_for_switch(&scope, &config, "v1", &mut next).await;

    // The history says who did what and why; the table marks the promoted version.
    let list = json(&blip2idc(&scope, &config, &["models", "list", "--json"]));
    let history: Vec<(String, String, String, String)> = list["promotions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("none").to_owned();
            (s("action"), s("version"), s("previous_version"), s("promoted_by"))
        })
        .collect();
    let h = |a: &str, v: &str, p: &str, by: &str| (a.to_owned(), v.to_owned(), p.to_owned(), by.to_owned());
    assert_eq!(
        history,
        [h("rollback", "v1", "v2", "bob"), h("promote", "v2", "v1", "alice"), h("promote", "v1", "none", "alice")]
    );
    assert_eq!(list["promotions"][0]["reason"], "v2 hallucinates logos");
    let table = blip2idc(&scope, &config, &["models", "list"]);
    let table = text(&table);
    let v1 = table.lines().find(|l| l.contains(" v1 ")).unwrap();
    assert!(v1.starts_with('*') && v1.contains("PROMOTED") && v1.contains("0.410"), "{table}");
    assert!(table.contains("rollback  v1  (was v2)  by bob: v2 hallucinates logos"), "{table}");

    // A stopped consumer no longer counts.
    shutdown.cancel();
    service.await.unwrap().unwrap();
    assert_eq!(listed(&scope, &config, "v1"), (0, true));
}

async fn wait_until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_replay_after_the_fix() {
    let scope = Scope::new("replay").await;
    let work = tempfile::tempdir().unwrap();
    let config = config_file(&scope, work.path());
    let cfg = scope.cfg.clone();
    let (shutdown, health) = (CancellationToken::new(), Arc::new(Health::default()));
    let s = shutdown.clone();
    let service =
        tokio::spawn(async move { blip2idc::pipeline::run(&cfg, test_captioner(Duration::ZERO), health, s).await });

    // Three events whose objects are missing, one malformed event.
    let ids: Vec<String> = (0..3).map(|i| format!("{}-{i}", scope.prefix)).collect();
    for (i, id) in ids.iter().enumerate() {
        scope.publish_json(id, &scope.event(id, &format!("late/{i}/a.jpg"), &format!("late/{i}/b.jpg"))).await;
    }
    scope.publish_raw("broken", b"{not json").await;
    let letters = scope.dead_letters(4, Duration::from_secs(60));
    let kinds: Vec<&str> = letters.iter().map(|d| d.headers["error.kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "object_missing").count(), 3, "{kinds:?}");
    assert!(kinds.contains(&"malformed_json"), "{kinds:?}");

    // The fix: the objects arrive.
    let s3 = scope.s3().await;
    for i in 0..3u64 {
        let (a, b, _) = blip2idc_dev::synthetic_pair(i, 48);
        blip2idc_dev::put(&s3, &scope.bucket, &format!("late/{i}/a.jpg"), blip2idc_dev::jpeg(&a, 90)).await.unwrap();
        blip2idc_dev::put(&s3, &scope.bucket, &format!("late/{i}/b.jpg"), blip2idc_dev::jpeg(&b, 90)).await.unwrap();
    }

    // Unknown kinds are refused with the list; a dry run counts and publishes nothing.
    let o = blip2idc(&scope, &config, &["dlq", "replay", "--kind", "not_found"]);
    assert!(!o.status.success() && text(&o).contains("the kinds are: malformed_json"), "{}", text(&o));
    let o = blip2idc(&scope, &config, &["dlq", "replay"]);
    assert!(!o.status.success() && text(&o).contains("--kind"), "a kind or --all-kinds is required: {}", text(&o));
    let dry = json(&blip2idc(&scope, &config, &["dlq", "replay", "--kind", "object_missing", "--dry-run", "--json"]));
    assert_eq!(dry["replayed"], serde_json::json!({"object_missing": 3}), "{dry}");
    assert_eq!(dry["skipped"], serde_json::json!({"malformed_json": 1}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(scope.captioned_events().await, 0, "a dry run publishes nothing");

    // The replay: the three pairs are captioned; the malformed event stays dead.
    let done = json(&blip2idc(&scope, &config, &["dlq", "replay", "--kind", "object_missing", "--json"]));
    assert_eq!(done["replayed"], serde_json::json!({"object_missing": 3}));
    scope.wait_for_captions(3, Duration::from_secs(60)).await;
    // Replaying again is harmless: the same rows, no new dead letters beyond the first four.
    let again = json(&blip2idc(&scope, &config, &["dlq", "replay", "--kind", "object_missing", "--json"]));
    assert_eq!(again["replayed"], serde_json::json!({"object_missing": 3}));
    wait_until(|| async { scope.committed_total() == 10 }, "all 10 input events are committed").await;
    assert_eq!(scope.caption_count().await, 3, "captioned twice, stored once");
    assert_eq!(scope.dead_letters(5, Duration::from_secs(2)).len(), 4);
    shutdown.cancel();
    service.await.unwrap().unwrap();
}
