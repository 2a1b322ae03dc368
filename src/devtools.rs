//! Development helpers shared by `blip2idc-dev` (quickstart), the pipeline benchmark and the
//! integration tests: topic and bucket creation, synthetic image pairs, publishing events, reading
//! committed offsets. Nothing in the service path uses this module.

use std::time::Duration;

use anyhow::Context;
use image::{ImageEncoder, Rgb, RgbImage};
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
    store: &crate::store::Store,
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
) -> anyhow::Result<crate::train::synthetic::PairSample> {
    let p = crate::train::synthetic::random_pair(rng);
    let (a, b) = (p.original.render(rng), p.modified.render(rng));
    put(s3, bucket, original, jpeg(&a, 95)).await?;
    put(s3, bucket, modified, jpeg(&b, 95)).await?;
    Ok(p)
}

/// JPEG bytes of `img` at `quality`.
pub fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    crate::train::augment::jpeg_bytes(img, quality)
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

/// A valid PNG header claiming `w`×`h` pixels with almost no data: a decompression bomb, for tests of
/// the decode limits.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut p = Vec::new();
    image::codecs::png::PngEncoder::new(&mut p)
        .write_image(&[0, 0, 0], 1, 1, image::ExtendedColorType::Rgb8)
        .expect("encoding to memory cannot fail");
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// A 16×16 progressive JPEG whose first scan (DC, first pass) is repeated until the file holds
/// `scans` scans: each one is another pass of the decoder over the image, so a few kilobytes can
/// keep a decoder busy for minutes (libjpeg-turbo's TJFLAG_LIMITSCANS stops at 500).
pub fn progressive_scan_bomb(scans: usize) -> Vec<u8> {
    use turbojpeg::raw;
    let (w, h) = (16usize, 16usize);
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    // SAFETY: libjpeg-turbo's compressor with a buffer it allocates (freed with tjFree).
    let jpeg = unsafe {
        let handle = raw::tjInitCompress();
        assert!(!handle.is_null());
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut size: std::os::raw::c_ulong = 0;
        let flags = raw::TJFLAG_PROGRESSIVE as i32;
        let res = raw::tjCompress2(
            handle,
            pixels.as_ptr(),
            w as i32,
            (w * 3) as i32,
            h as i32,
            raw::TJPF_TJPF_RGB,
            &mut buf,
            &mut size,
            raw::TJSAMP_TJSAMP_444 as i32,
            90,
            flags,
        );
        assert_eq!(res, 0, "tjCompress2");
        let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
        raw::tjFree(buf);
        raw::tjDestroy(handle);
        out
    };
    // Segments up to the first SOS (0xFFDA), then that scan's header and entropy-coded data up to
    // the next marker (0xFF followed by neither 0x00 nor a restart marker).
    let sos = (2..jpeg.len() - 1).find(|&i| jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA).expect("a scan");
    let header_len = u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
    let mut end = sos + 2 + header_len;
    while !(jpeg[end] == 0xFF && jpeg[end + 1] != 0x00 && !(0xD0..=0xD7).contains(&jpeg[end + 1])) {
        end += 1;
    }
    let mut out = jpeg[..sos].to_vec();
    for _ in 0..scans {
        out.extend_from_slice(&jpeg[sos..end]);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// PNG's chunk CRC (ISO 3309).
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Serves S3 on `addr` from the directory `root` (s3s-fs; requests must be signed with the key pair)
/// until SIGINT/SIGTERM. The local stack's S3 (deploy/local/up.sh), built with the project instead of
/// a separate `cargo install`.
pub async fn s3_server(
    root: &std::path::Path,
    addr: (&str, u16),
    access_key: &str,
    secret_key: &str,
    object_states: bool,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {}:{}", addr.0, addr.1))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let signals = {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
        }
    };
    tokio::spawn(signals);
    serve_s3(listener, root, access_key, secret_key, object_states, stop).await
}

/// Key prefixes under which [`serve_s3`] with `object_states` answers GET and HEAD as S3 answers for
/// objects in such a state, whatever is stored: what a real deployment meets with bucket policies,
/// Glacier, SSE-C and buckets in another region, but cannot be set up on a local file-backed server.
pub const OBJECT_STATES: [(&str, &str); 5] = [
    ("_state/forbidden/", "403 AccessDenied (a bucket policy denies the key)"),
    ("_state/archived/", "403 InvalidObjectState (archived to Glacier / Deep Archive)"),
    ("_state/sse-c/", "400 InvalidRequest (encrypted with a customer key the request does not carry)"),
    ("_state/moved/", "301 PermanentRedirect (the bucket lives at another endpoint)"),
    ("_state/throttled/", "503 SlowDown (throttled on every attempt)"),
];

/// Access control of [`serve_s3`]: signed requests only, plus the [`OBJECT_STATES`] when enabled.
struct Access {
    object_states: bool,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        use s3s::{S3Error, S3ErrorCode};
        if cx.credentials().is_none() {
            return Err(S3Error::new(S3ErrorCode::AccessDenied));
        }
        if !self.object_states || !matches!(cx.s3_op().name(), "GetObject" | "HeadObject") {
            return Ok(());
        }
        let s3s::path::S3Path::Object { key, .. } = cx.s3_path() else { return Ok(()) };
        let code = match OBJECT_STATES.iter().position(|(prefix, _)| key.starts_with(prefix)) {
            Some(0) => S3ErrorCode::AccessDenied,
            Some(1) => S3ErrorCode::InvalidObjectState,
            Some(2) => S3ErrorCode::InvalidRequest,
            Some(3) => S3ErrorCode::PermanentRedirect,
            Some(4) => S3ErrorCode::SlowDown,
            _ => return Ok(()),
        };
        let msg = format!("{key} is in the simulated state {}", code.as_str());
        Err(S3Error::with_message(code, msg))
    }
}

/// Serves S3 from `root` on `listener` until `stop` fires. With `object_states`, keys under the
/// [`OBJECT_STATES`] prefixes answer with those errors (for tests of the fetcher's error handling).
pub async fn serve_s3(
    listener: tokio::net::TcpListener,
    root: &std::path::Path,
    access_key: &str,
    secret_key: &str,
    object_states: bool,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("opening {}: {e:?}", root.display()))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    builder.set_access(Access { object_states });
    let service = builder.build();
    tracing::info!(root = %root.display(), object_states, "S3 server listening on http://{}", listener.local_addr()?);
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("S3 connection: {e}");
            }
        });
    }
    tracing::info!("S3 server stopped");
    Ok(())
}

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
