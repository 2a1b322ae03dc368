//! The Kubernetes manifests can run what they configure (issue 11, item 14): every absolute path the
//! ConfigMap names, and the container's HF cache and /tmp, lies under a volume mounted by each
//! workload that runs the binary; paths it writes to are not mounted read-only; the root filesystem
//! is read-only, so nothing relies on writing elsewhere. A text check (no YAML parser needed): the
//! manifest keeps one `- {name: ..., mountPath: ...}` per line.

use std::path::Path;

fn manifest() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/blip2idc.yaml")).unwrap()
}

/// (mount path, read-only) of every volume mount in a YAML document.
fn mounts(doc: &str) -> Vec<(String, bool)> {
    doc.lines()
        .filter_map(|l| {
            let at = l.find("mountPath:")?;
            let path = l[at + "mountPath:".len()..].trim().trim_end_matches('}').split(',').next()?.trim().to_owned();
            Some((path, l.contains("readOnly: true")))
        })
        .collect()
}

#[test]
fn every_workload_mounts_what_the_configuration_names() {
    let text = manifest();
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let config = docs.iter().find(|d| d.contains("kind: ConfigMap")).expect("a ConfigMap");
    // Absolute paths in the TOML (model.adapter, retrain.work_dir, ...), and what the image sets.
    let mut needed: Vec<(String, bool)> = config
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            let value = value.trim().trim_matches('"');
            value.starts_with('/').then(|| (value.to_owned(), key.trim() == "work_dir"))
        })
        .collect();
    assert!(needed.iter().any(|(p, _)| p.starts_with("/models/")), "the ConfigMap names a model path: {needed:?}");
    needed.push(("/var/lib/blip2idc/hf".into(), true)); // HF_HOME of the images
    needed.push(("/tmp/x".into(), true));
    let workloads: Vec<&&str> =
        docs.iter().filter(|d| d.contains("kind: Deployment") || d.contains("kind: CronJob")).collect();
    assert_eq!(workloads.len(), 2);
    for doc in workloads {
        let kind = if doc.contains("kind: CronJob") { "CronJob" } else { "Deployment" };
        let mounted = mounts(doc);
        for (path, writes) in &needed {
            let m = mounted.iter().filter(|(m, _)| path.starts_with(m.as_str())).max_by_key(|(m, _)| m.len());
            let Some((m, read_only)) = m else { panic!("{kind}: {path} is not under any mount ({mounted:?})") };
            assert!(!(*writes && *read_only), "{kind}: {path} must be writable but {m} is mounted read-only");
        }
        assert!(doc.contains("readOnlyRootFilesystem: true"), "{kind}: the root filesystem should be read-only");
        assert!(doc.contains("--config"), "{kind}: runs with the ConfigMap's file");
    }
}
