//! `blip2idc-dev`: development code kept out of the service's library. Shared by the `blip2idc-dev`
//! binary (quickstart, local S3 server, memory benchmark), the benchmarks and the integration tests
//! (a dev-dependency of `blip2idc`): topic and bucket creation, synthetic image pairs, publishing
//! events, reading committed offsets ([this module](self)); hostile images for the decode limits
//! ([`images`]); real photographs and photo-sized pairs ([`photos`]); the local S3 server ([`mod@s3_server`]); evaluation files ([`eval_files`]); the memory
//! benchmark ([`bench_memory`]). Nothing in the service path uses this crate.

pub mod bench_memory;
pub mod edits;
pub mod eval_files;
pub mod images;
pub mod photos;
pub mod s3_server;

pub use eval_files::write_eval_files;
pub use images::{png_bomb, progressive_scan_bomb};
pub use s3_server::{s3_server, serve_s3, OBJECT_STATES};

use std::time::Duration;

use anyhow::Context;
use image::{Rgb, RgbImage};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::TopicPartitionList;

/// Creates `topic` with `partitions` partitions; an existing topic is fine.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().context("admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Creates `bucket` unless it exists.
pub async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<()> {
    if s3.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))?;
    Ok(())
}

/// Uploads one object.
pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    s3.put_object().bucket(bucket).key(key).body(bytes.into()).send().await.map_err(|e| {
        anyhow::anyhow!("uploading s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
    })?;
    Ok(())
}

/// A producer for test and demo events.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").set("acks", "all").create()?)
}

/// Publishes `payload` with `key` and waits for the acknowledgement.
pub async fn publish(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) -> anyhow::Result<()> {
    p.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| anyhow::anyhow!("publishing to {topic}: {e}"))
}

/// The committed offsets of `group` for `topic`'s partitions `0..partitions` (-1 where none).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions).map(|p| got.find_partition(topic, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1)).collect())
}

/// The kinds of synthetic edits.
pub const EDITS: [&str; 4] = ["add", "remove", "recolour", "move"];

const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 30, 30]),
    ("green", [40, 180, 60]),
    ("blue", [40, 70, 220]),
    ("yellow", [235, 210, 40]),
    ("purple", [140, 50, 170]),
    ("orange", [240, 140, 30]),
];

/// A synthetic (original, modified) pair of `size`×`size` images with coloured squares, the edit
/// applied, and a template caption of it. Deterministic in `seed`.
pub fn synthetic_pair(seed: u64, size: u32) -> (RgbImage, RgbImage, String) {
    let mut rng = SplitMix(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995);
    let n = 2 + rng.below(3) as usize;
    let s = (size / 5).max(2);
    let mut shapes: Vec<(u32, u32, usize)> =
        (0..n).map(|_| (rng.below(size - s), rng.below(size - s), rng.below(COLOURS.len() as u32) as usize)).collect();
    let original = draw(&shapes, size, s, seed);
    let edit = EDITS[rng.below(4) as usize];
    let caption = match edit {
        "add" => {
            let c = rng.below(COLOURS.len() as u32) as usize;
            shapes.push((rng.below(size - s), rng.below(size - s), c));
            format!("a {} square was added", COLOURS[c].0)
        }
        "remove" => {
            let (_, _, c) = shapes.remove(rng.below(shapes.len() as u32) as usize);
            format!("the {} square was removed", COLOURS[c].0)
        }
        "recolour" => {
            let i = rng.below(shapes.len() as u32) as usize;
            let old = shapes[i].2;
            let new = (old + 1 + rng.below(COLOURS.len() as u32 - 1) as usize) % COLOURS.len();
            shapes[i].2 = new;
            format!("the {} square turned {}", COLOURS[old].0, COLOURS[new].0)
        }
        _ => {
            let i = rng.below(shapes.len() as u32) as usize;
            shapes[i].0 = rng.below(size - s);
            shapes[i].1 = rng.below(size - s);
            format!("the {} square moved", COLOURS[shapes[i].2].0)
        }
    };
    (original, draw(&shapes, size, s, seed), caption)
}

fn draw(shapes: &[(u32, u32, usize)], size: u32, s: u32, seed: u64) -> RgbImage {
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let v = 235 - ((x + y + seed as u32) % 7) as u8;
        Rgb([v, v, v])
    });
    for &(x0, y0, c) in shapes {
        for y in y0..(y0 + s).min(size) {
            for x in x0..(x0 + s).min(size) {
                img.put_pixel(x, y, Rgb(COLOURS[c].1));
            }
        }
    }
    img
}

/// Uploads `pairs` synthetic image pairs (JPEG, quality 95) as `s3://bucket/prefix/i/{original,
/// modified}.jpg` and inserts one label per pair: one of the pair's phrasings, category = edit kind.
pub async fn seed_synthetic_labels(
    s3: &aws_sdk_s3::Client,
    store: &blip2idc::store::Store,
    (bucket, prefix): (&str, &str),
    pairs: usize,
    seed: u64,
    labeled_by: &str,
) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..pairs {
        let (ka, kb) = (format!("{prefix}/{i}/original.jpg"), format!("{prefix}/{i}/modified.jpg"));
        let p = put_synthetic_pair(s3, bucket, (&ka, &kb), &mut rng).await?;
        let uris = (format!("s3://{bucket}/{ka}"), format!("s3://{bucket}/{kb}"));
        store.insert_label((&uris.0, &uris.1), &p.captions[i % p.captions.len()], Some(p.kind), labeled_by).await?;
    }
    Ok(())
}

/// Draws a pair of the synthetic shapes world (`train::synthetic`), uploads its two images as JPEG
/// (quality 95) under `keys` and returns the pair (edit kind, reference captions).
pub async fn put_synthetic_pair(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    (original, modified): (&str, &str),
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<blip2idc::train::synthetic::PairSample> {
    let p = blip2idc::train::synthetic::random_pair(rng);
    let (a, b) = (p.original.render(rng), p.modified.render(rng));
    put(s3, bucket, original, jpeg(&a, 95)).await?;
    put(s3, bucket, modified, jpeg(&b, 95)).await?;
    Ok(p)
}

/// JPEG bytes of `img` at `quality`.
pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    blip2idc::train::augment::jpeg_bytes(img, quality)
}

/// A tiny deterministic PRNG (SplitMix64), so synthetic data needs no RNG crate state.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n.max(1) as u64) as u32
    }
}
