//! Adapters are untrusted data (they come from S3): crafted files are rejected with an error before
//! anything they declare is allocated, and a hot swap that fails leaves exactly the previous weights
//! (issue 11, items 3 and 12). Runs on the committed tiny checkpoints; the hostile torch pickles are
//! made by `tests/fixtures/blip2/crafted/make_crafted.py`, the hostile safetensors here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip2idc::model::ops::Mode;
use blip2idc::model::{Blip2Idc, LoadOptions};
use candle_core::{DType, Device, Tensor};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2")
}

fn load(ckpt: &str, adapter: bool) -> Blip2Idc {
    Blip2Idc::load(&LoadOptions {
        checkpoint: dir().join(ckpt).to_string_lossy().into_owned(),
        adapter: adapter.then(|| dir().join(format!("{ckpt}-adapter"))),
        dtype: DType::F32,
        device: Device::Cpu,
        merge_adapter: true,
    })
    .unwrap()
}

/// Logits for one fixed input, as bits (an exact comparison).
fn logits(m: &Blip2Idc) -> Vec<u32> {
    let s = m.processor.height as usize;
    let pv = Tensor::arange(0f32, (3 * s * s) as f32, &Device::Cpu).unwrap();
    let pv = ((pv / (3 * s * s) as f64).unwrap().reshape((1, 3, s, s)).unwrap() - 0.5).unwrap();
    let bos = Tensor::new(&[[2u32]], &Device::Cpu).unwrap();
    let out = m.model.forward(&pv, &bos, Mode::Inference).unwrap();
    out.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// The tensors of a fixture adapter (safetensors).
fn tensors_of(ckpt: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(format!("{ckpt}-adapter/adapter_model.safetensors")), &Device::Cpu)
        .unwrap()
}

/// Writes an adapter directory with `ckpt`'s config and the given tensors.
fn write_adapter(root: &Path, name: &str, ckpt: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir().join(format!("{ckpt}-adapter/adapter_config.json")), d.join("adapter_config.json")).unwrap();
    candle_core::safetensors::save(tensors, d.join("adapter_model.safetensors")).unwrap();
    d
}

/// Writes a safetensors file by hand: `header` verbatim, then `data`.
fn raw_safetensors(root: &Path, name: &str, ckpt: &str, header: &str, data: &[u8]) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir().join(format!("{ckpt}-adapter/adapter_config.json")), d.join("adapter_config.json")).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(d.join("adapter_model.safetensors"), bytes).unwrap();
    d
}

fn swap_error(m: &mut Blip2Idc, adapter: &Path) -> String {
    format!("{:#}", m.replace_adapter(Some(adapter), true).expect_err("a crafted adapter must be rejected"))
}

#[test]
fn crafted_torch_pickles_are_rejected_before_allocation() {
    let mut m = load("tiny-b", false);
    // Before the checks, this one made candle allocate 2^30 × 48 floats (192 GiB) and abort.
    let err = swap_error(&mut m, &dir().join("crafted/bin-absurd-shape"));
    assert!(err.contains("declared shape [1073741824, 48]"), "{err}");
    let err = swap_error(&mut m, &dir().join("crafted/bin-short-storage"));
    assert!(err.contains("needs more than its storage of 10 elements"), "{err}");
    // The untouched fixture still loads through the same path.
    m.replace_adapter(Some(&dir().join("tiny-b-adapter")), true).unwrap();
}

#[test]
fn crafted_safetensors_are_rejected_before_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = load("tiny-a", false);
    let (name, a) = tensors_of("tiny-a").into_iter().find(|(k, _)| k.ends_with("lora_A.weight")).unwrap();
    let (r, in_dim) = a.dims2().unwrap();

    // A shape the model cannot take, self-consistent in the file: refused from the header alone.
    let header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[{r},{}],"data_offsets":[0,{}]}}}}"#,
        in_dim + 1,
        r * (in_dim + 1) * 4
    );
    let d = raw_safetensors(tmp.path(), "wrong-shape", "tiny-a", &header, &vec![0u8; r * (in_dim + 1) * 4]);
    let err = swap_error(&mut m, &d);
    assert!(err.contains(&format!("declared shape [{r}, {}]", in_dim + 1)), "{err}");

    // An absurd shape over a few bytes of data.
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[{r},1099511627776],"data_offsets":[0,16]}}}}"#);
    let d = raw_safetensors(tmp.path(), "absurd-shape", "tiny-a", &header, &[0u8; 16]);
    swap_error(&mut m, &d);

    // A header that claims to be 2^60 bytes long.
    let d = tmp.path().join("absurd-header");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir().join("tiny-a-adapter/adapter_config.json"), d.join("adapter_config.json")).unwrap();
    std::fs::write(d.join("adapter_model.safetensors"), (1u64 << 60).to_le_bytes()).unwrap();
    let err = swap_error(&mut m, &d);
    assert!(err.contains("header length"), "{err}");

    // A (sparse) file far larger than any adapter of this model.
    let d = write_adapter(tmp.path(), "huge-file", "tiny-a", &tensors_of("tiny-a"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("adapter_model.safetensors"))
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let err = swap_error(&mut m, &d);
    assert!(err.contains("more than any r = "), "{err}");

    // An absurd rank in the config.
    let d = write_adapter(tmp.path(), "absurd-rank", "tiny-a", &tensors_of("tiny-a"));
    let cfg = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["r"] = serde_json::json!(1u64 << 40);
    std::fs::write(d.join("adapter_config.json"), cfg.to_string()).unwrap();
    let err = swap_error(&mut m, &d);
    assert!(err.contains("is absurd"), "{err}");
}

#[test]
fn a_failed_swap_leaves_exactly_the_previous_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = load("tiny-a", true);
    let before = logits(&m);
    let adapted_before = m.adapted_modules.clone();
    let good = tensors_of("tiny-a");

    // Weights missing for a module the config targets (found halfway through the model).
    let mut keys: Vec<&String> = good.keys().filter(|k| k.contains("language_model")).collect();
    keys.sort();
    let mut missing = good.clone();
    let module = keys[keys.len() / 2].replace(".lora_A.weight", "").replace(".lora_B.weight", "");
    missing.remove(&format!("{module}.lora_A.weight"));
    missing.remove(&format!("{module}.lora_B.weight"));
    // Weights for a linear the config does not target (found only after every linear was staged).
    let mut extra = good.clone();
    let (name, a) =
        good.iter().find(|(k, _)| k.contains("language_model") && k.ends_with("v_proj.lora_A.weight")).unwrap();
    let b = &good[&name.replace("lora_A", "lora_B")];
    let out_proj = name.replace("v_proj.lora_A", "out_proj.lora_A");
    extra.insert(out_proj.clone(), a.clone());
    extra.insert(out_proj.replace("lora_A", "lora_B"), b.clone());

    for (what, tensors, needle) in
        [("missing weights", &missing, "has no weights for it"), ("an untargeted module", &extra, "does not adapt")]
    {
        let d = write_adapter(tmp.path(), &what.replace(' ', "-"), "tiny-a", tensors);
        let err = swap_error(&mut m, &d);
        assert!(err.contains(needle), "{what}: {err}");
        assert!(logits(&m) == before, "{what}: a failed swap changed the weights");
        assert_eq!(m.adapted_modules, adapted_before, "{what}");
        assert_eq!(m.adapter.as_ref().and_then(|a| a.source.clone()), Some(dir().join("tiny-a-adapter")), "{what}");
    }
    // And a good swap after the failures still works (to the base and back).
    m.replace_adapter(None, true).unwrap();
    assert!(logits(&m) != before);
    m.replace_adapter(Some(&dir().join("tiny-a-adapter")), true).unwrap();
    let after = logits(&m);
    let same = before.iter().zip(&after).all(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs() < 1e-5);
    assert!(same, "re-applying the adapter gives its logits again");
}
