//! Tests against pycocoevalcap 1.2's own numbers
//! (`tests/fixtures/metrics/pycocoevalcap_fixture.json`, made by `make_metrics_fixtures.py` beside it) and property tests.

use serde_json::Value;

use super::*;

/// numpy's `log` may differ from the C library's by one ulp, hence a
/// tolerance instead of equality.
const TOL: f64 = 1e-12;

fn fixture() -> Value {
    let path = format!("{}/tests/fixtures/metrics/pycocoevalcap_fixture.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("valid JSON fixture")
}

/// The numbers of `"section": {... "key": <number or [numbers]> ...}` parsed
/// from the fixture's text with Rust's correctly rounded `str::parse`
/// (serde_json without its `float_roundtrip` feature may be 1 ulp off).
fn exact_numbers(section: &str, key: &str) -> Vec<f64> {
    let path = format!("{}/tests/fixtures/metrics/pycocoevalcap_fixture.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = text.find(&format!("\"{section}\"")).expect("section");
    let text = &text[start..];
    let at = text.find(&format!("\"{key}\"")).expect("key") + key.len() + 2;
    let rest = text[at..].trim_start().trim_start_matches(':').trim_start();
    let body = if let Some(list) = rest.strip_prefix('[') {
        &list[..list.find(']').expect("]")]
    } else {
        &rest[..rest.find([',', '}']).expect("end of number")]
    };
    body.split(',').map(|x| x.trim().parse::<f64>().expect("number")).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_string()).collect()
}

/// The fixture's items: raw and tokenized captions.
struct Fixture {
    items: Vec<EvalItem>,
    cands_tok: Vec<String>,
    refs_tok: Vec<Vec<String>>,
    corpus: Value,
    per_image: Value,
}

fn load() -> Fixture {
    let fx = fixture();
    let items_json = fx["items"].as_array().expect("items");
    Fixture {
        items: items_json
            .iter()
            .map(|i| EvalItem {
                id: i["id"].as_str().expect("id").to_string(),
                candidate: i["candidate"].as_str().expect("candidate").to_string(),
                references: strings(&i["references"]),
                category: None,
            })
            .collect(),
        cands_tok: items_json.iter().map(|i| i["candidate_tok"].as_str().expect("tok").to_string()).collect(),
        refs_tok: items_json.iter().map(|i| strings(&i["references_tok"])).collect(),
        corpus: fx["corpus_scores"].clone(),
        per_image: fx["per_image_scores"].clone(),
    }
}

fn close(name: &str, got: f64, want: &Value) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{name}: expected a number, got {want}"));
    assert!((got - want).abs() <= TOL, "{name}: got {got:e}, pycocoevalcap {want:e}, diff {:e}", got - want);
}

fn check_list(name: &str, got: &[f64], want: &Value) {
    let want = want.as_array().unwrap_or_else(|| panic!("{name}: list"));
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{name}[{i}]"), *g, w);
    }
}

#[test]
fn bleu_matches_fixture() {
    let fx = load();
    let b = bleu::score(&fx.cands_tok, &fx.refs_tok);
    for k in 0..4 {
        let name = format!("Bleu_{}", k + 1);
        close(&name, b.corpus[k], &fx.corpus[&name]);
        let per: Vec<f64> = b.per_item.iter().map(|s| s[k]).collect();
        check_list(&name, &per, &fx.per_image[&name]);
    }
}

#[test]
fn rouge_matches_fixture() {
    let fx = load();
    let r = rouge::score(&fx.cands_tok, &fx.refs_tok);
    close("ROUGE_L", r.corpus, &fx.corpus["ROUGE_L"]);
    check_list("ROUGE_L", &r.per_item, &fx.per_image["ROUGE_L"]);
    // ROUGE-L involves no transcendental function: bit-exact, including
    // numpy's pairwise mean.
    assert_eq!(r.per_item, exact_numbers("per_image_scores", "ROUGE_L"));
    assert_eq!(r.corpus, exact_numbers("corpus_scores", "ROUGE_L")[0]);
}

#[test]
fn cider_matches_fixture() {
    let fx = load();
    let c = cider::score(&fx.cands_tok, &fx.refs_tok);
    close("CIDEr", c.corpus, &fx.corpus["CIDEr"]);
    check_list("CIDEr", &c.per_item, &fx.per_image["CIDEr"]);
}

#[test]
fn fixed_idf_reproduces_corpus_mode_on_its_corpus() {
    let fx = load();
    let c = cider::score(&fx.cands_tok, &fx.refs_tok);
    let idf = cider::FixedIdf::from_references(&fx.refs_tok);
    for (i, cand) in fx.cands_tok.iter().enumerate() {
        assert_eq!(idf.score_item(cand, &fx.refs_tok[i]), c.per_item[i]);
    }
}

#[test]
fn evaluate_from_raw_captions_matches_fixture() {
    let fx = load();
    let report = evaluate(&fx.items, &EvalOptions::native()).expect("evaluate");
    let json = report.corpus.to_json();
    for name in METRIC_NAMES {
        if name == "METEOR" {
            assert!(json[name].is_null());
            continue;
        }
        close(name, json[name].as_f64().expect("number"), &fx.corpus[name]);
        let per: Vec<f64> = report.items.iter().map(|i| i.scores.to_json()[name].as_f64().expect("number")).collect();
        check_list(name, &per, &fx.per_image[name]);
    }
    assert_eq!(report.meteor_unavailable_reason, None);
    assert_eq!(report.items[3].id, "img03");
    // Pretokenized input gives the same numbers.
    let pretok: Vec<EvalItem> = fx
        .items
        .iter()
        .zip(fx.cands_tok.iter().zip(&fx.refs_tok))
        .map(|(item, (c, r))| EvalItem { candidate: c.clone(), references: r.clone(), ..item.clone() })
        .collect();
    let opts = EvalOptions { pretokenized: true, ..EvalOptions::native() };
    assert_eq!(evaluate(&pretok, &opts).expect("evaluate").corpus, report.corpus);
}

#[test]
fn exact_number_parsing_agrees_with_serde_within_an_ulp() {
    let fx = load();
    let exact = exact_numbers("per_image_scores", "CIDEr");
    let serde: Vec<f64> =
        fx.per_image["CIDEr"].as_array().expect("list").iter().map(|v| v.as_f64().expect("f64")).collect();
    assert_eq!(exact.len(), 21);
    for (a, b) in exact.iter().zip(&serde) {
        assert!((a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(1.0));
    }
    assert_eq!(exact_numbers("corpus_scores", "CIDEr").len(), 1);
}

#[test]
fn json_keys_and_order() {
    let s = Scores { bleu: [0.1, 0.2, 0.3, 0.4], meteor: None, rouge_l: 0.5, cider: 0.6 };
    assert_eq!(
        serde_json::to_string(&s.to_json()).expect("json"),
        r#"{"Bleu_1":0.1,"Bleu_2":0.2,"Bleu_3":0.3,"Bleu_4":0.4,"METEOR":null,"ROUGE_L":0.5,"CIDEr":0.6}"#
    );
}

/// Skips a METEOR test with its reason, except under CI (`CI` set), where `.ci/run` installs Java and
/// the jar, so a missing METEOR is a failure rather than a test that passes without testing.
fn skip_meteor(test: &str, reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "{test}: METEOR unavailable under CI: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
}

/// METEOR through the real jar. Skipped, with the reason printed, when Java
/// or the jar is missing (a failure under CI).
#[test]
fn meteor_matches_fixture() {
    let fx = load();
    let config = MeteorConfig::default();
    let m = match meteor::score(&fx.cands_tok, &fx.refs_tok, &config).expect("METEOR ran") {
        Ok(m) => m,
        Err(reason) => return skip_meteor("meteor_matches_fixture", &reason.to_string()),
    };
    close("METEOR", m.corpus, &fx.corpus["METEOR"]);
    check_list("METEOR", &m.per_item, &fx.per_image["METEOR"]);
    // METEOR's corpus score is its own aggregate, not the item mean.
    assert!((pycompat::np_mean(&m.per_item) - m.corpus).abs() > 0.05);
}

/// Full pipeline with METEOR and categories: each category scored as its own
/// evaluation. Skipped without Java.
#[test]
fn evaluate_with_meteor_and_categories() {
    let fx = load();
    if let Err(e) = meteor::Meteor::start(&MeteorConfig::default()) {
        return skip_meteor("evaluate_with_meteor_and_categories", &e.to_string());
    }
    let items: Vec<EvalItem> = fx
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| EvalItem {
            category: Some(if i % 3 == 0 { "add" } else { "remove" }.to_string()),
            ..item.clone()
        })
        .collect();
    let opts = EvalOptions { by_category: true, ..EvalOptions::default() };
    let report = evaluate(&items, &opts).expect("evaluate");
    close("METEOR", report.corpus.meteor.expect("METEOR"), &fx.corpus["METEOR"]);
    assert_eq!(report.by_category.len(), 2);
    assert_eq!(report.by_category[0].category, "add");
    assert_eq!(report.by_category[0].count, 7);
    // A category's scores are those of evaluating its items alone (one
    // category checked with METEOR, to spare a JVM start; all without).
    for (i, cat) in report.by_category.iter().enumerate() {
        let sub: Vec<EvalItem> =
            items.iter().filter(|it| it.category.as_deref() == Some(&cat.category)).cloned().collect();
        let opts = if i == 0 { EvalOptions::default() } else { EvalOptions::native() };
        let alone = evaluate(&sub, &opts).expect("evaluate subset");
        let mut want = cat.scores;
        if i != 0 {
            want.meteor = None;
        }
        assert_eq!(alone.corpus, want, "category {}", cat.category);
    }
}

fn native_tok(cands: &[&str], refs: &[Vec<&str>]) -> Report {
    score_captions(cands, refs, &EvalOptions { pretokenized: true, ..EvalOptions::native() }).expect("score")
}

#[test]
fn property_identical_candidate_and_references() {
    let cands = ["a red car is parked on the left", "the blue cube moved to the right", "two dogs play in the park"];
    let refs: Vec<Vec<&str>> = cands.iter().map(|c| vec![*c, *c, *c]).collect();
    let r = native_tok(&cands, &refs);
    for item in &r.items {
        for b in item.scores.bleu {
            assert!((b - 1.0).abs() < 1e-8, "BLEU {b}");
            assert!(b < 1.0, "smoothing keeps BLEU just below 1");
        }
        assert_eq!(item.scores.rouge_l, 1.0);
        // Every n-gram order present, every cosine 1, no length penalty.
        assert!((item.scores.cider - 10.0).abs() < 1e-12, "CIDEr {}", item.scores.cider);
    }
}

#[test]
fn property_empty_candidate() {
    let r = native_tok(&["", "a dog runs"], &[vec!["a cat sleeps", "the cat"], vec!["a dog runs"]]);
    let s = r.items[0].scores;
    assert_eq!(s.bleu, [0.0; 4]);
    assert_eq!(s.rouge_l, 0.0);
    assert_eq!(s.cider, 0.0);
    // Raw (untokenized) empty candidate too.
    let r = score_captions(&["", "..."], &[vec!["a cat"], vec!["a dog"]], &EvalOptions::native()).expect("score");
    assert_eq!(r.items[0].scores.cider, 0.0);
    assert_eq!(r.items[1].scores.rouge_l, 0.0);
}

#[test]
fn property_single_reference() {
    let cands = ["a red car is parked", "the cube moved left", "a cat"];
    let refs = vec![vec!["a red car parked here"], vec!["the cube moved to the left"], vec!["a small cat"]];
    let r = native_tok(&cands, &refs);
    for (i, item) in r.items.iter().enumerate() {
        // ROUGE-L with one reference is the F-measure of that reference.
        let c: Vec<&str> = cands[i].split(' ').collect();
        let rf: Vec<&str> = refs[i][0].split(' ').collect();
        let ids = |v: &[&str]| -> Vec<u32> {
            v.iter().map(|w| c.iter().chain(&rf).position(|x| x == w).expect("word") as u32).collect()
        };
        let lcs = rouge::lcs_len(&ids(&c), &ids(&rf)) as f64;
        let (p, rec) = (lcs / c.len() as f64, lcs / rf.len() as f64);
        let b2 = pycompat::py_pow(1.2, 2.0);
        assert_eq!(item.scores.rouge_l, ((1.0 + b2) * p * rec) / (rec + b2 * p));
        assert!(item.scores.cider >= 0.0 && item.scores.cider.is_finite());
        for b in item.scores.bleu {
            assert!((0.0..=1.0).contains(&b));
        }
    }
    // BLEU's effective reference length is that reference's length.
    let stats = bleu::stats(&cands, &refs);
    assert_eq!(stats.iter().map(|s| s.reflen).collect::<Vec<_>>(), vec![5, 6, 3]);
}

#[test]
fn property_single_item_cider_is_zero() {
    let r = native_tok(&["the red car moved"], &[vec!["the red car moved", "a red car moved"]]);
    assert_eq!(r.corpus.cider, 0.0);
}

#[test]
fn input_validation() {
    assert!(evaluate(&[], &EvalOptions::native()).is_err());
    let item = EvalItem { id: "a".into(), candidate: "x".into(), references: vec!["x".into()], category: None };
    let dup = vec![item.clone(), item.clone()];
    let err = evaluate(&dup, &EvalOptions::native()).expect_err("duplicate");
    assert!(err.to_string().contains("duplicate"), "{err}");
    let no_refs = vec![EvalItem { references: vec![], ..item }];
    assert!(evaluate(&no_refs, &EvalOptions::native()).is_err());
    assert!(score_captions(&["a"], &Vec::<Vec<&str>>::new(), &EvalOptions::native()).is_err());
}

#[test]
fn required_meteor_fails_loudly() {
    let item = EvalItem { id: "a".into(), candidate: "x".into(), references: vec!["x".into()], category: None };
    let opts = EvalOptions {
        meteor: MeteorConfig { jar: Some("/nonexistent/meteor.jar".into()), required: true, ..MeteorConfig::default() },
        ..EvalOptions::default()
    };
    assert!(evaluate(std::slice::from_ref(&item), &opts).is_err());
    let opts = EvalOptions { meteor: MeteorConfig { required: false, ..opts.meteor }, ..EvalOptions::default() };
    let r = evaluate(&[item], &opts).expect("evaluate");
    assert_eq!(r.corpus.meteor, None);
    assert!(r.meteor_unavailable_reason.expect("reason").contains("not found"));
}
