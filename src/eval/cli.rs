//! `blip2idc eval`: score predictions against references with the
//! pycocoevalcap metrics.
//!
//! ```text
//! blip2idc eval --predictions P.jsonl --references R.jsonl
//!               [--pretokenized] [--json] [--per-item OUT.jsonl]
//!               [--by-category] [--meteor-jar PATH]
//! ```
//!
//! * predictions: one `{"id": "…", "caption": "…"}` per line;
//! * references: one `{"id": "…", "references": ["…", …], "category": "add"}`
//!   per line (`category` optional). Ids may be strings or integers.
//!
//! Items are scored in the order of the references file. Every id must be
//! on both sides exactly once; otherwise the command fails naming the ids.
//! stdout carries the scores only (a table, or with `--json` exactly one
//! JSON object with pycocoevalcap's keys); warnings go to stderr.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use super::{evaluate, EvalItem, EvalOptions, MeteorConfig, Report, Scores, METRIC_NAMES};

/// Arguments of `blip2idc eval`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Score captions with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D exactly as pycocoevalcap 1.2",
    long_about = "Score predicted captions against reference captions with the coco-caption \
                  metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) exactly as pycocoevalcap 1.2 \
                  computes them, after the same PTB tokenization. Scores are raw values as \
                  pycocoevalcap returns them (not x100). METEOR needs Java and meteor-1.5.jar; \
                  without them it is reported as unavailable (null)."
)]
pub struct EvalArgs {
    /// Predictions, JSON Lines: one {"id": "...", "caption": "..."} per line.
    #[arg(long, value_name = "P.jsonl")]
    pub predictions: PathBuf,

    /// References, JSON Lines: one {"id": "...", "references": ["...", ...], "category": "add"}
    /// per line; "category" is optional. Items are scored in this file's order.
    #[arg(long, value_name = "R.jsonl")]
    pub references: PathBuf,

    /// Captions are already tokenized (space-separated tokens, as pycocoevalcap's PTB
    /// tokenizer outputs them): skip tokenization.
    #[arg(long)]
    pub pretokenized: bool,

    /// Print exactly one JSON object with pycocoevalcap's keys (Bleu_1, Bleu_2, Bleu_3,
    /// Bleu_4, METEOR, ROUGE_L, CIDEr; METEOR null when unavailable) and nothing else on
    /// stdout. With --by-category it also has a "by_category" object.
    #[arg(long)]
    pub json: bool,

    /// Also write per-item scores to this file, one JSON object per line
    /// ({"id", "category", "Bleu_1", ..., "CIDEr"}), in the references file's order.
    #[arg(long, value_name = "OUT.jsonl")]
    pub per_item: Option<PathBuf>,

    /// Also score each category separately (as if pycocoevalcap were run on that
    /// category's items alone) and print a table with one row per category plus the
    /// overall scores. Items without a category are grouped as "(none)".
    #[arg(long)]
    pub by_category: bool,

    /// Path to METEOR's meteor-1.5.jar (with its data/ directory). Default: the
    /// BLIP2IDC_METEOR_JAR environment variable, else the jar of the pip-installed
    /// pycocoevalcap.
    #[arg(long, value_name = "PATH")]
    pub meteor_jar: Option<PathBuf>,

    /// Java executable used to run METEOR.
    #[arg(long, value_name = "PATH", default_value = "java")]
    pub java: PathBuf,

    /// Skip METEOR (no Java process); it is reported as null.
    #[arg(long, conflicts_with = "require_meteor")]
    pub no_meteor: bool,

    /// Fail if METEOR cannot be computed instead of reporting it as null.
    #[arg(long)]
    pub require_meteor: bool,
}

/// Runs `blip2idc eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let items = load_items(&args.predictions, &args.references)?;
    let opts = EvalOptions {
        pretokenized: args.pretokenized,
        by_category: args.by_category,
        meteor: MeteorConfig {
            enabled: !args.no_meteor,
            jar: args.meteor_jar.clone(),
            java: args.java.clone(),
            required: args.require_meteor,
        },
    };
    let report = evaluate(&items, &opts)?;
    if let Some(reason) = &report.meteor_unavailable_reason {
        eprintln!("warning: METEOR unavailable: {reason}");
    }
    if let Some(path) = &args.per_item {
        write_per_item(path, &report)?;
    }
    let out = if args.json {
        let mut s = serde_json::to_string(&json_summary(&report))?;
        s.push('\n');
        s
    } else {
        render_tables(&report, args.pretokenized)
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to stdout")?;
    Ok(())
}

/// The `--json` object.
pub fn json_summary(report: &Report) -> Value {
    let mut obj = report.corpus.to_json();
    if !report.by_category.is_empty() {
        let mut cats = serde_json::Map::new();
        for c in &report.by_category {
            let mut v = c.scores.to_json();
            v.as_object_mut().expect("object").insert("n".to_string(), Value::from(c.count));
            cats.insert(c.category.clone(), v);
        }
        obj.as_object_mut().expect("object").insert("by_category".to_string(), Value::Object(cats));
    }
    obj
}

fn write_per_item(path: &Path, report: &Report) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for item in &report.items {
        let mut obj = serde_json::Map::new();
        obj.insert("id".to_string(), Value::from(item.id.clone()));
        if let Some(c) = &item.category {
            obj.insert("category".to_string(), Value::from(c.clone()));
        }
        if let Value::Object(scores) = item.scores.to_json() {
            obj.extend(scores);
        }
        serde_json::to_writer(&mut w, &Value::Object(obj))?;
        w.write_all(b"\n")?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))
}

fn fmt_value(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "n/a".to_string(),
    }
}

/// The human-readable output: corpus scores, then (with categories) a table
/// with one row per category and an overall row.
pub fn render_tables(report: &Report, pretokenized: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pycocoevalcap metrics, {} items, {}",
        report.items.len(),
        if pretokenized { "pretokenized" } else { "PTB-tokenized" }
    );
    for (name, value) in METRIC_NAMES.iter().zip(report.corpus.values()) {
        let mut line = format!("  {name:<8} {}", fmt_value(value, 6));
        if value.is_none() {
            if let Some(reason) = &report.meteor_unavailable_reason {
                let _ = write!(line, " ({reason})");
            }
        }
        let _ = writeln!(s, "{line}");
    }
    if !report.by_category.is_empty() {
        let width =
            report.by_category.iter().map(|c| c.category.chars().count()).max().unwrap_or(0).max("Category".len());
        let _ = writeln!(s);
        let mut header = format!("{:<width$} {:>6}", "Category", "N");
        for name in METRIC_NAMES {
            let _ = write!(header, " {name:>8}");
        }
        let _ = writeln!(s, "{header}");
        let row = |s: &mut String, name: &str, n: usize, scores: &Scores| {
            let mut line = format!("{name:<width$} {n:>6}");
            for v in scores.values() {
                let _ = write!(line, " {:>8}", fmt_value(v, 4));
            }
            let _ = writeln!(s, "{line}");
        };
        for c in &report.by_category {
            row(&mut s, &c.category, c.count, &c.scores);
        }
        row(&mut s, "Overall", report.items.len(), &report.corpus);
    }
    s
}

/// An id given as a JSON string or integer.
fn read_id(v: &Value, what: &str) -> anyhow::Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Value::Null => bail!("{what}: missing \"id\""),
        other => bail!("{what}: \"id\" must be a string or an integer, not {other}"),
    }
}

/// Reads a JSON Lines file, skipping blank lines; yields (line number, value).
fn read_jsonl(path: &Path) -> anyhow::Result<Vec<(usize, Value)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// "3 ids: a, b, c" style list of the first few ids.
fn name_ids(ids: &[&str]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = ids.iter().take(SHOWN).map(|s| format!("{s:?}")).collect();
    let more = if ids.len() > SHOWN { format!(", … ({} more)", ids.len() - SHOWN) } else { String::new() };
    format!("{} id{}: {}{}", ids.len(), if ids.len() == 1 { "" } else { "s" }, shown.join(", "), more)
}

/// Reads and joins the two files into items in the references' order.
pub fn load_items(predictions: &Path, references: &Path) -> anyhow::Result<Vec<EvalItem>> {
    let mut preds: HashMap<String, String> = HashMap::new();
    let mut pred_order: Vec<String> = Vec::new();
    for (line, v) in read_jsonl(predictions)? {
        let what = format!("{}:{line}", predictions.display());
        if let Some(error) = v["error"].as_str() {
            bail!(
                "{what}: this pair failed to caption ({error}); fix it and run `blip2idc caption --batch` again \
                 with the same output, which retries failed lines"
            );
        }
        let id = read_id(&v["id"], &what)?;
        let caption =
            v["caption"].as_str().with_context(|| format!("{what}: \"caption\" must be a string"))?.to_string();
        if preds.insert(id.clone(), caption).is_some() {
            bail!("{what}: duplicate prediction id {id:?}");
        }
        pred_order.push(id);
    }
    let mut items = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (line, v) in read_jsonl(references)? {
        let what = format!("{}:{line}", references.display());
        let id = read_id(&v["id"], &what)?;
        if !seen.insert(id.clone()) {
            bail!("{what}: duplicate reference id {id:?}");
        }
        let refs = v["references"]
            .as_array()
            .with_context(|| format!("{what}: \"references\" must be a list of strings"))?
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .with_context(|| format!("{what}: \"references\" must be a list of strings"))?;
        if refs.is_empty() {
            bail!("{what}: item {id:?} has no references");
        }
        let category = match &v["category"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => bail!("{what}: \"category\" must be a string, not {other}"),
        };
        items.push(EvalItem { id, candidate: String::new(), references: refs, category });
    }
    let missing_pred: Vec<&str> = items.iter().map(|i| i.id.as_str()).filter(|id| !preds.contains_key(*id)).collect();
    let missing_ref: Vec<&str> = pred_order.iter().map(String::as_str).filter(|id| !seen.contains(*id)).collect();
    if !missing_pred.is_empty() || !missing_ref.is_empty() {
        let mut msg = String::from("predictions and references do not cover the same ids");
        if !missing_pred.is_empty() {
            let _ = write!(msg, "; no prediction for {}", name_ids(&missing_pred));
        }
        if !missing_ref.is_empty() {
            let _ = write!(msg, "; no references for {}", name_ids(&missing_ref));
        }
        bail!(msg);
    }
    if items.is_empty() {
        bail!("{}: no items", references.display());
    }
    for item in &mut items {
        item.candidate = preds.remove(&item.id).expect("checked above");
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EvalArgs,
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("blip2idc-eval-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "eval",
            "--predictions",
            "p.jsonl",
            "--references",
            "r.jsonl",
            "--json",
            "--by-category",
            "--pretokenized",
            "--per-item",
            "o.jsonl",
            "--meteor-jar",
            "m.jar",
        ])
        .expect("parse");
        assert!(cli.args.json && cli.args.by_category && cli.args.pretokenized);
        assert_eq!(cli.args.meteor_jar, Some(PathBuf::from("m.jar")));
        assert!(Cli::try_parse_from(["eval", "--predictions", "p"]).is_err());
        assert!(Cli::try_parse_from([
            "eval",
            "--predictions",
            "p",
            "--references",
            "r",
            "--no-meteor",
            "--require-meteor"
        ])
        .is_err());
    }

    #[test]
    fn joins_in_reference_order_and_reports_missing_ids() {
        let d = tempdir("join");
        let p = write(&d, "p.jsonl", "{\"id\": \"b\", \"caption\": \"B\"}\n\n{\"id\": 7, \"caption\": \"seven\"}\n");
        let r = write(
            &d,
            "r.jsonl",
            "{\"id\": 7, \"references\": [\"x\"], \"category\": \"add\"}\n{\"id\": \"b\", \"references\": [\"y\", \"z\"]}\n",
        );
        let items = load_items(&p, &r).expect("load");
        assert_eq!(items[0].id, "7");
        assert_eq!(items[0].candidate, "seven");
        assert_eq!(items[0].category.as_deref(), Some("add"));
        assert_eq!(items[1].references, vec!["y", "z"]);

        let r2 = write(&d, "r2.jsonl", "{\"id\": \"q\", \"references\": [\"x\"]}\n");
        let err = load_items(&p, &r2).expect_err("missing").to_string();
        assert!(err.contains("no prediction for 1 id: \"q\""), "{err}");
        assert!(err.contains("no references for 2 ids: \"b\", \"7\""), "{err}");

        let dup = write(&d, "dup.jsonl", "{\"id\": \"b\", \"caption\": \"B\"}\n{\"id\": \"b\", \"caption\": \"C\"}\n");
        assert!(load_items(&dup, &r).expect_err("dup").to_string().contains("duplicate prediction id"));
        let bad = write(&d, "bad.jsonl", "{\"id\": \"b\"}\n");
        assert!(load_items(&bad, &r).is_err());
        let many: String = (0..9).map(|i| format!("{{\"id\": \"m{i}\", \"references\": [\"x\"]}}\n")).collect();
        let r3 = write(&d, "r3.jsonl", &many);
        let err = load_items(&p, &r3).expect_err("missing").to_string();
        assert!(err.contains("9 ids: \"m0\", \"m1\", \"m2\", \"m3\", \"m4\", … (4 more)"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn json_and_tables() {
        let d = tempdir("run");
        let p = write(
            &d,
            "p.jsonl",
            "{\"id\": \"1\", \"caption\": \"the red car is gone\"}\n{\"id\": \"2\", \"caption\": \"a dog appeared\"}\n",
        );
        let r = write(
            &d,
            "r.jsonl",
            "{\"id\": \"1\", \"references\": [\"the red car was removed\"], \"category\": \"remove\"}\n\
             {\"id\": \"2\", \"references\": [\"a dog was added\"], \"category\": \"add\"}\n",
        );
        let items = load_items(&p, &r).expect("load");
        let opts = EvalOptions { by_category: true, ..EvalOptions::native() };
        let report = evaluate(&items, &opts).expect("evaluate");
        let json = json_summary(&report);
        let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "by_category"]);
        assert_eq!(json["by_category"]["add"]["n"], 1);
        let table = render_tables(&report, false);
        assert!(table.contains("Category"), "{table}");
        assert!(table.contains("Overall"), "{table}");
        assert!(table.contains("remove"), "{table}");

        let out = d.join("items.jsonl");
        write_per_item(&out, &report).expect("per item");
        let text = std::fs::read_to_string(&out).expect("read");
        let first: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(first["id"], "1");
        assert_eq!(first["category"], "remove");
        assert!(first["METEOR"].is_null());
        let _ = std::fs::remove_dir_all(&d);
    }
}
