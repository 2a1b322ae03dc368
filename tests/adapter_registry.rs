//! A promoted adapter that cannot be loaded (here a crafted torch pickle from S3) leaves the running
//! adapter in place, is marked in `model_versions.load_error`, and is not downloaded and retried on
//! every poll; promoting a good version afterwards switches as usual (issue 11, items 3 and 12).
//! Real PostgreSQL and S3 server; the real BLIP2IDC captioner on the tiny-b checkpoint.

mod common;

use std::path::{Path, PathBuf};

use blip2idc::adapters::AdapterStore;
use blip2idc::caption::reload::check_once;
use blip2idc::caption::CaptionWorker;
use blip2idc::store::{ModelVersion, Promotion, PromotionAction};

const TEST_PROMOTION: Promotion =
    Promotion { action: PromotionAction::Promote, by: "tests/adapter_registry", reason: "test" };

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloadable_promoted_adapter_is_marked_and_not_retried() {
    let mut scope = common::Scope::new("registry").await;
    let tmp = tempfile::tempdir().unwrap();
    scope.cfg.model.checkpoint = fixtures().join("tiny-b").to_string_lossy().into_owned();
    scope.cfg.model.adapter = None;
    scope.cfg.model.version = Some(format!("{}-base", scope.prefix));
    scope.cfg.retrain.work_dir = tmp.path().to_owned();
    let store = scope.store();
    let adapters = AdapterStore::new(scope.s3().await, &scope.cfg.s3);
    let worker = {
        let factory = blip2idc::caption::blip2idc::factory(&scope.cfg.model).unwrap();
        tokio::task::spawn_blocking(move || CaptionWorker::spawn(factory)).await.unwrap().unwrap()
    };
    let running = worker.model_version();

    // A crafted adapter (a 192 GiB lora_A declared over 768 bytes) is promoted.
    let bad = format!("{}-crafted", scope.prefix);
    let bad_uri = format!("s3://{}/adapters/{bad}/", scope.bucket);
    let crafted = fixtures().join("crafted/bin-absurd-shape");
    for name in ["adapter_config.json", "adapter_model.bin"] {
        let bytes = std::fs::read(crafted.join(name)).unwrap();
        blip2idc_dev::put(&scope.s3().await, &scope.bucket, &format!("adapters/{bad}/{name}"), bytes).await.unwrap();
    }
    let register = |version: &str, uri: &str| ModelVersion {
        version: version.to_owned(),
        base_model: scope.cfg.model.checkpoint.clone(),
        adapter_uri: Some(uri.to_owned()),
    };
    store.register_candidate(&register(&bad, &bad_uri), &serde_json::json!({})).await.unwrap();
    store.promote(&bad, &TEST_PROMOTION).await.unwrap();

    let err = format!("{:#}", check_once(&scope.cfg, &store, &worker).await.expect_err("must not load"));
    assert!(err.contains("declared shape [1073741824, 48]"), "{err}");
    assert_eq!(worker.model_version(), running, "the running adapter stays");
    let marked: Option<String> = sqlx::query_scalar("SELECT load_error FROM model_versions WHERE version = $1")
        .bind(&bad)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(marked.as_deref().is_some_and(|m| m.contains("declared shape")), "{marked:?}");

    // Not retried: with the objects gone, a retry would fail differently; the marked version is skipped.
    let s3 = scope.s3().await;
    for name in ["adapter_config.json", "adapter_model.bin"] {
        s3.delete_object().bucket(&scope.bucket).key(format!("adapters/{bad}/{name}")).send().await.unwrap();
    }
    assert!(!check_once(&scope.cfg, &store, &worker).await.unwrap(), "a marked version is not retried");
    assert_eq!(worker.model_version(), running);

    // A good version promoted afterwards is loaded.
    let good = format!("{}-good", scope.prefix);
    let good_uri = format!("s3://{}/adapters/{good}/", scope.bucket);
    let tiny_b = tmp.path().join("tiny-b-adapter");
    {
        // tiny-b's fixture adapter is a torch pickle; upload() sends safetensors, so convert it.
        let shapes = {
            let mut m = blip2idc::model::Blip2Idc::load(&blip2idc::model::LoadOptions {
                checkpoint: scope.cfg.model.checkpoint.clone(),
                adapter: None,
                dtype: candle_core::DType::F32,
                device: candle_core::Device::Cpu,
                merge_adapter: true,
            })
            .unwrap();
            m.model.linear_shapes()
        };
        let a = blip2idc::model::lora::Adapter::load(
            &fixtures().join("tiny-b-adapter"),
            &candle_core::Device::Cpu,
            &shapes,
        )
        .unwrap();
        a.save(&tiny_b).unwrap();
    }
    adapters.upload(&tiny_b, &good_uri).await.unwrap();
    store.register_candidate(&register(&good, &good_uri), &serde_json::json!({})).await.unwrap();
    store.promote(&good, &TEST_PROMOTION).await.unwrap();
    assert!(check_once(&scope.cfg, &store, &worker).await.unwrap());
    assert_eq!(worker.model_version(), good);

    // Promoting the crafted version again clears its mark (an operator fixed it): it is tried again.
    store.promote(&bad, &TEST_PROMOTION).await.unwrap();
    let err = format!("{:#}", check_once(&scope.cfg, &store, &worker).await.unwrap_err());
    assert!(err.contains("downloading"), "re-promoted, so retried (and its objects are gone now): {err}");
    assert_eq!(worker.model_version(), good);
}
