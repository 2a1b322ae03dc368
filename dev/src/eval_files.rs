//! The input files of `blip2idc eval` from captions of the synthetic world.

use anyhow::Context;

/// Writes `predictions.jsonl` and `references.jsonl` (the input of `blip2idc eval`) into `dir` for the
/// rows `(event_id, model_version, caption, attributes)` of pairs published by `blip2idc-dev seed`
/// (their attributes carry the edit's reference captions); other rows are skipped. Returns how many
/// pairs were written.
pub fn write_eval_files(
    rows: &[(String, String, String, serde_json::Value)],
    dir: &std::path::Path,
) -> anyhow::Result<usize> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mut predictions, mut references, mut n) = (String::new(), String::new(), 0);
    for (id, _, caption, attributes) in rows {
        let Some(refs) = attributes.get("synthetic_references") else { continue };
        writeln!(predictions, "{}", serde_json::json!({"id": id, "caption": caption}))?;
        let category = attributes.get("synthetic_edit").cloned().unwrap_or(serde_json::Value::Null);
        writeln!(references, "{}", serde_json::json!({"id": id, "references": refs, "category": category}))?;
        n += 1;
    }
    std::fs::write(dir.join("predictions.jsonl"), predictions)?;
    std::fs::write(dir.join("references.jsonl"), references)?;
    Ok(n)
}
