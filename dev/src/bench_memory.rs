//! `blip2idc-dev bench-memory`: the service's peak memory under a flood of very large image pairs,
//! against its budget (issue 11, item 8).
//!
//! Runs the real `blip2idc serve` binary twice on the local stack: once with
//! `pipeline.max_in_flight_bytes` = `budget`, once with a budget large enough not to bind (the
//! reference). Each run: the model is loaded, the idle RSS is read (the model and runtime, "base"), then
//! `pairs` events of `size`² JPEG pairs are published at once, RSS is sampled until every event is
//! stored, and the peak (VmHWM) is compared with base + budget. Prints both runs and the ratios.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate as devtools;
use blip2idc::config::Config;

/// The reference run's budget: more than the machine has, so it never binds.
const UNBOUNDED: u64 = 64 << 30;

/// One run's memory figures, in bytes.
#[derive(Debug)]
pub struct MemoryRun {
    pub budget: u64,
    pub base_rss: u64,
    pub peak_rss: u64,
    pub seconds: f64,
}

/// Runs the benchmark; prints a table and returns (bounded, reference).
pub async fn bench_memory(
    cfg: &Config,
    size: u32,
    pairs: usize,
    budget: u64,
) -> anyhow::Result<(MemoryRun, MemoryRun)> {
    let s3 = blip2idc::fetch::s3_client(&cfg.s3).await;
    let id = format!("benchmem-{}", std::process::id());
    let bucket = id.clone();
    devtools::ensure_bucket(&s3, &bucket).await?;
    eprintln!("drawing and uploading 2 pairs of {size}x{size} JPEGs ...");
    let mut keys = Vec::new();
    for i in 0..2u64 {
        let (a, b, _) = devtools::synthetic_pair(i, size);
        let (ka, kb) = (format!("{i}/a.jpg"), format!("{i}/b.jpg"));
        let (ja, jb) = (devtools::jpeg(&a, 90), devtools::jpeg(&b, 90));
        eprintln!("  pair {i}: {} + {} bytes", ja.len(), jb.len());
        devtools::put(&s3, &bucket, &ka, ja).await?;
        devtools::put(&s3, &bucket, &kb, jb).await?;
        keys.push((ka, kb));
    }
    let bounded = run_once(cfg, &bucket, &keys, &format!("{id}-b"), pairs, budget, 4).await?;
    let reference = run_once(cfg, &bucket, &keys, &format!("{id}-r"), pairs, UNBOUNDED, 4).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("{pairs} pairs of {size}x{size} JPEGs published at once (tiny model: base = runtime + model, idle)");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>14} {:>8}",
        "run", "base MiB", "budget MiB", "peak MiB", "peak/(base+b)", "seconds"
    );
    for (name, r) in [("budgeted", &bounded), ("reference (no budget)", &reference)] {
        let (budget, ratio) = if r.budget == UNBOUNDED {
            ("-".to_owned(), "-".to_owned())
        } else {
            (format!("{:.0}", mib(r.budget)), format!("{:.3}", r.peak_rss as f64 / (r.base_rss + r.budget) as f64))
        };
        println!(
            "{name:<28} {:>10.0} {budget:>10} {:>10.0} {ratio:>14} {:>8.1}",
            mib(r.base_rss),
            mib(r.peak_rss),
            r.seconds
        );
    }
    println!(
        "budgeted peak / reference peak = {:.3}; budgeted time / reference time = {:.2}",
        bounded.peak_rss as f64 / reference.peak_rss as f64,
        bounded.seconds / reference.seconds
    );
    Ok((bounded, reference))
}

async fn run_once(
    cfg: &Config,
    bucket: &str,
    keys: &[(String, String)],
    id: &str,
    pairs: usize,
    budget: u64,
    decode_concurrency: usize,
) -> anyhow::Result<MemoryRun> {
    let input = format!("{id}-in");
    devtools::create_topic(&cfg.kafka.brokers, &input, 3).await?;
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let config = std::env::temp_dir().join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
input_topic = "{input}"
dlq_topic = "{id}-dlq"
group_id = "{id}"
[s3]
allowed_buckets = ["{bucket}"]
[model]
max_new_tokens = 8
reload_poll_interval = "0s"
[pipeline]
max_in_flight_bytes = {budget}
decode_concurrency = {decode_concurrency}
[admin]
listen = "{admin}"
[log]
format = "json"
filter = "warn"
"#
        ),
    )?;
    let exe = std::env::current_exe()?.with_file_name("blip2idc");
    let mut child = Command::new(&exe)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let result = measure(cfg, &mut child, admin, (&input, bucket), id, keys, pairs).await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let _ = std::fs::remove_file(&config);
    let (base_rss, peak_rss, seconds) = result?;
    Ok(MemoryRun { budget, base_rss, peak_rss, seconds })
}

async fn measure(
    cfg: &Config,
    child: &mut Child,
    admin: std::net::SocketAddr,
    (input, bucket): (&str, &str),
    id: &str,
    keys: &[(String, String)],
    pairs: usize,
) -> anyhow::Result<(u64, u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !http_ok(admin, "/readyz") {
        anyhow::ensure!(child.try_wait()?.is_none(), "blip2idc serve exited early");
        anyhow::ensure!(Instant::now() < deadline, "the service was not ready within 5 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id();
    let base = proc_status(pid, "VmRSS:")?;
    let producer = devtools::producer(&cfg.kafka.brokers)?;
    let started = Instant::now();
    for i in 0..pairs {
        let (ka, kb) = &keys[i % keys.len()];
        let event = serde_json::json!({
            "event_id": format!("{id}-{i}"),
            "original": format!("s3://{bucket}/{ka}"),
            "republished": format!("s3://{bucket}/{kb}"),
        });
        devtools::publish(&producer, input, &i.to_string(), event.to_string().as_bytes()).await?;
    }
    let store = blip2idc::store::Store::connect_lazy(&cfg.database)?;
    loop {
        let n = store.caption_count(&format!("{id}-")).await?;
        if n as usize >= pairs {
            break;
        }
        anyhow::ensure!(child.try_wait()?.is_none(), "blip2idc serve exited during the run");
        anyhow::ensure!(Instant::now() < deadline + Duration::from_secs(600), "only {n} of {pairs} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((base, proc_status(pid, "VmHWM:")?, seconds))
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS:`, `VmHWM:`).
fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let line = text.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    let kib: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kib * 1024)
}

fn http_ok(addr: std::net::SocketAddr, path: &str) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect(addr) else { return false };
    let _ = conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200")
}
