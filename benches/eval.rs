//! Benchmark: BLEU-1..4 + ROUGE-L + CIDEr-D on 10,000 items × 5 references
//! of synthetic, pretokenized caption-like text, ours against pycocoevalcap's
//! Python on the same data in the same run.
//!
//! ```text
//! cargo bench --bench eval            # 10,000 items
//! BLIP2IDC_BENCH_ITEMS=2000 cargo bench --bench eval
//! ```
//!
//! Run without `--bench` (as `cargo test --all-targets` does) it scores 200
//! items only, as a quick agreement check.
//!
//! Prints both times and the ratio, and fails if any corpus or per-item score
//! differs from pycocoevalcap's by more than 1e-9 (it also counts how many are
//! bit-identical). Needs `python3` with pycocoevalcap (`PYTHON` overrides the
//! interpreter); without it only our timings are printed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use blip2idc::eval::ngrams::Corpus;
use blip2idc::eval::{bleu, cider, ptb, rouge, score_captions, EvalOptions};

const WORDS: &str = "a an the this that there is are was were has have been being it its \
    one two three four five several many some no more fewer left right top bottom middle center \
    front back behind near next to of in on at from into onto with without by under over above \
    below between beside around and or but now no longer anymore removed added moved changed \
    replaced appeared disappeared gone missing new different same color colour red blue green \
    yellow black white gray grey brown purple orange pink small large big tiny huge tall short \
    long wide narrow bright dark light shiny matte metal metallic rubber plastic wooden glass cube \
    sphere cylinder ball block box object thing shape car truck van bus bike bicycle motorcycle \
    person man woman child boy girl people dog cat bird horse cow sheep tree trees bush grass \
    flower flowers sky cloud clouds sun building house wall window door roof road street sidewalk \
    sign pole light lamp bench table chair sofa bed picture image photo frame background \
    foreground scene water river lake sea beach sand snow rock mountain hill field park parking \
    lot fence gate bridge boat plane train station shop store text letters word logo watermark \
    hat shirt jacket dress shoes bag umbrella cup bottle plate food pizza cake fruit apple banana \
    phone laptop screen television book paper camera clock wheel tire mirror seat style painting \
    drawing sketch cartoon filter brightness contrast saturation shadow shadows reflection sunset \
    night day morning evening rain fog smoke fire made make turn turned becomes became look looks \
    like appears seems instead whole entire part side corner edge piece";

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Caption-like text: a per-item base caption (lengths 5–20, Zipf-like word
/// choice), references and candidate as noisy copies of it.
fn generate(items: usize, refs_per_item: usize, seed: u64) -> (Vec<String>, Vec<Vec<String>>) {
    let vocab: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(seed);
    let word = |rng: &mut Rng| vocab[((rng.unit().powi(3)) * vocab.len() as f64) as usize];
    let variant = |rng: &mut Rng, base: &[&str]| -> String {
        let len = 5 + rng.below(16);
        let mut out: Vec<&str> = Vec::with_capacity(len);
        let mut i = rng.below(3);
        while out.len() < len {
            if i < base.len() && rng.unit() < 0.7 {
                out.push(base[i]);
            } else {
                out.push(word(rng));
            }
            i += 1;
        }
        out.join(" ")
    };
    let mut cands = Vec::with_capacity(items);
    let mut refs = Vec::with_capacity(items);
    for _ in 0..items {
        let base_len = 5 + rng.below(16);
        let base: Vec<&str> = (0..base_len).map(|_| word(&mut rng)).collect();
        refs.push((0..refs_per_item).map(|_| variant(&mut rng, &base)).collect());
        cands.push(variant(&mut rng, &base));
    }
    (cands, refs)
}

/// Our scores as pycocoevalcap names them, per item and corpus.
struct Ours {
    corpus: Vec<(String, f64)>,
    per_item: Vec<(String, Vec<f64>)>,
}

fn ours(cands: &[String], refs: &[Vec<String>]) -> Ours {
    // What `evaluate` does, on one thread: split and intern once for BLEU and
    // CIDEr-D (ROUGE-L splits on " " itself).
    let corpus = Corpus::new(cands, refs);
    let b = bleu::from_stats(&bleu::corpus_stats(&corpus));
    let c = cider::score_corpus(&corpus);
    let r = rouge::score(cands, refs);
    let mut corpus = Vec::new();
    let mut per_item = Vec::new();
    for k in 0..4 {
        let name = format!("Bleu_{}", k + 1);
        corpus.push((name.clone(), b.corpus[k]));
        per_item.push((name, b.per_item.iter().map(|s| s[k]).collect()));
    }
    corpus.push(("ROUGE_L".into(), r.corpus));
    per_item.push(("ROUGE_L".into(), r.per_item));
    corpus.push(("CIDEr".into(), c.corpus));
    per_item.push(("CIDEr".into(), c.per_item));
    Ours { corpus, per_item }
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("at least one run"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it: then a small smoke run (agreement check only).
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let items: usize = std::env::var("BLIP2IDC_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 10_000 } else { 200 });
    if !bench_mode {
        println!("eval bench in test mode (no --bench): {items} items, timings not meaningful");
    }
    let (cands, refs) = generate(items, 5, 0x5EED_CAFE);
    println!("eval bench: {items} items x 5 references, pretokenized, seed 0x5EEDCAFE");

    let (t_seq, scores) = best_of(5, || ours(&cands, &refs));
    let opts = EvalOptions { pretokenized: true, ..EvalOptions::native() };
    let (t_par, report) = best_of(5, || score_captions(&cands, &refs, &opts).expect("score"));
    assert_eq!(report.corpus.cider, scores.corpus[5].1);
    println!("ours  BLEU+ROUGE-L+CIDEr-D, one thread:           {:>9.3} s", t_seq.as_secs_f64());
    println!("ours  score_captions (3 scorers in parallel):      {:>9.3} s", t_par.as_secs_f64());
    // For information: our PTB tokenizer on all these captions (not part of
    // the comparison, which is pretokenized as the benchmark asks).
    let all: Vec<&str> = cands.iter().chain(refs.iter().flatten()).map(String::as_str).collect();
    let (t_tok, _) = best_of(3, || ptb::tokenize_captions(&all));
    println!("ours  PTB tokenization of all {} captions (info): {:>9.3} s", all.len(), t_tok.as_secs_f64());

    // pycocoevalcap on the same data.
    let dir = std::env::temp_dir().join(format!("blip2idc-eval-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data_path = dir.join("data.json");
    let out_path = dir.join("out.json");
    let mut gts = serde_json::Map::new();
    let mut res = serde_json::Map::new();
    for (i, (c, r)) in cands.iter().zip(&refs).enumerate() {
        gts.insert(format!("{i}"), serde_json::json!(r));
        res.insert(format!("{i}"), serde_json::json!([c]));
    }
    std::fs::write(&data_path, serde_json::json!({ "gts": gts, "res": res }).to_string()).expect("write data");
    let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "benches", "pycocoevalcap_bench.py"].iter().collect();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let t = Instant::now();
    let status = Command::new(&python).arg(&script).arg(&data_path).arg(&out_path).status();
    let wall = t.elapsed();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("pycocoevalcap not run ({python} {}: {other:?}); only our timings above", script.display());
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
    }
    let out: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("read python output")).expect("json");
    let _ = std::fs::remove_dir_all(&dir);
    let secs = |k: &str| out["seconds"][k].as_f64().expect("seconds");
    let t_py = secs("Bleu") + secs("Rouge") + secs("Cider");
    println!(
        "pycocoevalcap Bleu {:.3} s + Rouge {:.3} s + Cider {:.3} s = {:>9.3} s  (process wall {:.3} s incl. JSON load)",
        secs("Bleu"),
        secs("Rouge"),
        secs("Cider"),
        t_py,
        wall.as_secs_f64()
    );
    println!(
        "speed-up: {:.1}x (one thread), {:.1}x (parallel)",
        t_py / t_seq.as_secs_f64(),
        t_py / t_par.as_secs_f64()
    );

    // Agreement: |ours - pycocoevalcap| <= 1e-9 everywhere; count bit-identical.
    let parse = |v: &serde_json::Value| -> f64 { v.as_str().expect("repr string").parse().expect("float") };
    let mut worst = 0.0f64;
    let mut identical = 0usize;
    let mut total = 0usize;
    let mut report_lines = String::new();
    for ((name, corpus), (_, per)) in scores.corpus.iter().zip(&scores.per_item) {
        let py_corpus = parse(&out["corpus"][name]);
        let py_per: Vec<f64> = out["per_item"][name].as_array().expect("list").iter().map(parse).collect();
        assert_eq!(py_per.len(), per.len(), "{name}: item count");
        let mut diff = (corpus - py_corpus).abs();
        let mut same = usize::from(corpus.to_bits() == py_corpus.to_bits());
        for (a, b) in per.iter().zip(&py_per) {
            diff = diff.max((a - b).abs());
            same += usize::from(a.to_bits() == b.to_bits());
        }
        worst = worst.max(diff);
        identical += same;
        total += per.len() + 1;
        let _ = writeln!(
            report_lines,
            "  {name:<8} corpus ours {corpus:.12} py {py_corpus:.12}  max |diff| {diff:.1e}  bit-identical {same}/{}",
            per.len() + 1
        );
    }
    print!("{report_lines}");
    println!("agreement: max |diff| {worst:.1e} (limit 1e-9), {identical}/{total} values bit-identical");
    assert!(worst <= 1e-9, "scores differ from pycocoevalcap by {worst:e}");
}
