//! The local stack's S3 server (s3s-fs, SigV4 checked), with simulated object states for the
//! fetcher's error-handling tests.

use anyhow::Context;

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
