//! Adapter storage: LoRA adapter files in S3, PEFT layout under `s3://bucket/prefix/`, and their local
//! copies. The service (hot swap, `caption::reload`) downloads the promoted adapter; the retraining
//! job (`train::job`) downloads it too and uploads candidates. Neither depends on the other.
//!
//! Reads go through the image [`Fetcher`] (transient failures retried with backoff, a size cap),
//! writes retry with the same backoff, and each object has a deadline, so a flaky S3 costs a retry
//! rather than a finished training run, and a dead one fails the run instead of hanging it. The
//! registry's URIs are the service's own, so any bucket they name may be read (the event allow-list
//! is for untrusted input).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::Client;
use tokio_util::sync::CancellationToken;

use crate::config::S3Config;
use crate::fetch::Fetcher;
use crate::retry::{Backoff, GaveUp, Retry};
use crate::s3uri::S3Prefix;

/// Larger than any LoRA adapter of BLIP-2 (r = 8 on blip2-opt-2.7b is 25 MB).
const MAX_ADAPTER_BYTES: u64 = 2 << 30;
/// Per object, retries included.
const OBJECT_DEADLINE: Duration = Duration::from_secs(300);
/// Attempts per upload before giving up.
const UPLOAD_ATTEMPTS: u32 = 6;
const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHT_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter_model.bin"];

/// Reads and writes adapters with the service's S3 client and retry policy.
pub struct AdapterStore {
    client: Client,
    s3: S3Config,
    backoff: Backoff,
}

impl AdapterStore {
    pub fn new(client: Client, s3: &S3Config) -> Self {
        AdapterStore { client, s3: s3.clone(), backoff: Backoff::new(s3.retry_initial_backoff, s3.retry_max_backoff) }
    }

    /// Downloads `adapter_config.json` and the weights (`.safetensors`, else `.bin`) under `uri`
    /// into `dir`.
    pub async fn download(&self, uri: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        let location = S3Prefix::parse(uri)?;
        let fetcher = Fetcher::new(
            self.client.clone(),
            &S3Config {
                allowed_buckets: vec![location.bucket.clone()],
                max_object_bytes: MAX_ADAPTER_BYTES,
                ..self.s3.clone()
            },
        );
        // Start empty: weights left by an earlier download must never be picked up instead.
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut got_weights = false;
        for name in std::iter::once(CONFIG_FILE).chain(WEIGHT_FILES) {
            if got_weights {
                break;
            }
            let object = location.object(name);
            let cancel = CancellationToken::new();
            let fetched = tokio::time::timeout(OBJECT_DEADLINE, fetcher.fetch_if_exists(&object, &cancel))
                .await
                .map_err(|_| anyhow::anyhow!("downloading {object}: no success within {OBJECT_DEADLINE:?}"))?;
            match fetched {
                Ok(Some(bytes)) => {
                    std::fs::write(dir.join(name), &bytes).with_context(|| format!("writing {}", dir.display()))?;
                    got_weights = name != CONFIG_FILE;
                }
                // Either weights file may be absent; the config may not.
                Ok(None) if name != CONFIG_FILE => {}
                Ok(None) => anyhow::bail!("downloading {object}: no such object"),
                Err(e) => anyhow::bail!("downloading {object}: {e}"),
            }
        }
        anyhow::ensure!(got_weights, "{uri} has no {} or {}", WEIGHT_FILES[0], WEIGHT_FILES[1]);
        Ok(dir.to_owned())
    }

    /// Uploads a saved adapter directory (`adapter_config.json` + `adapter_model.safetensors`) to `uri`.
    pub async fn upload(&self, dir: &Path, uri: &str) -> anyhow::Result<()> {
        let location = S3Prefix::parse(uri)?;
        for name in [CONFIG_FILE, WEIGHT_FILES[0]] {
            let bytes =
                std::fs::read(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))?;
            let object = location.object(name);
            tokio::time::timeout(OBJECT_DEADLINE, self.put(&object.bucket, &object.key, bytes))
                .await
                .map_err(|_| anyhow::anyhow!("uploading {object}: no success within {OBJECT_DEADLINE:?}"))??;
        }
        Ok(())
    }

    async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let body = bytes::Bytes::from(bytes);
        let object = format!("s3://{bucket}/{key}");
        let put = || async {
            match self.client.put_object().bucket(bucket).key(key).body(body.clone().into()).send().await {
                Ok(_) => Ok(()),
                Err(e) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
            }
        };
        let retry = Retry::new("adapter_upload", self.backoff).at_most(UPLOAD_ATTEMPTS).about(&object);
        retry.run(put, |_| true).await.map_err(|gave_up| match gave_up {
            GaveUp::Exhausted { retries, last, .. } => {
                anyhow::anyhow!("uploading {object} ({} attempts): {last}", retries + 1)
            }
            other => anyhow::anyhow!("uploading {object}: {}", other.into_last()),
        })
    }
}

/// The directory under `root` for the files of model `version`. A version comes from the database, so
/// it is data: it becomes one path component inside `root` whatever it holds (`/`, `..`, a leading
/// `.`, characters outside `[A-Za-z0-9._+@-]`); a version that had to be changed gets a hash of the
/// original appended, so distinct versions never share a directory.
pub fn version_dir(root: &Path, version: &str) -> PathBuf {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._+@-".contains(c);
    let mut name: String = version.chars().map(|c| if plain(c) { c } else { '_' }).collect();
    if name != version || name.is_empty() || name.starts_with('.') {
        // FNV-1a: stable across runs and platforms (std's hasher is not).
        let hash = version.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        name = format!("{}-{hash:016x}", name.trim_start_matches('.'));
    }
    root.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_become_one_directory_inside_the_cache() {
        let root = Path::new("/var/cache/blip2idc");
        let mut seen = std::collections::HashSet::new();
        for v in [
            "base--retrain-1-20261202030856",
            "base+retrain-1-20261202030856",
            "base+adapter@0123abcd",
            "../../etc",
            "..",
            ".",
            "",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "a_b",
            "a/b_",
            "ü",
        ] {
            let dir = version_dir(root, v);
            assert_eq!(dir.parent(), Some(root), "{v:?} -> {}", dir.display());
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(!name.starts_with('.') && !name.contains('/') && !name.contains('\\'), "{v:?} -> {name}");
            assert!(seen.insert(dir.clone()), "{v:?} shares {}", dir.display());
        }
        // Plain names (every name this service makes) are kept as they are.
        assert_eq!(version_dir(root, "base--retrain-1-2026"), root.join("base--retrain-1-2026"));
        assert_eq!(version_dir(root, "base+retrain-1-2026"), root.join("base+retrain-1-2026"));
    }
}
