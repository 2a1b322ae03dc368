//! Prometheus metrics: names, help texts and the process-wide recorder behind `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONSUMED: &str = "blip2idc_events_consumed_total";
pub const CAPTIONED: &str = "blip2idc_captions_stored_total";
pub const DEAD_LETTERED: &str = "blip2idc_dead_lettered_total";
pub const DEAD_LETTERS_PENDING: &str = "blip2idc_dead_letters_pending";
pub const TRANSIENT_RETRIES: &str = "blip2idc_transient_retries_total";
pub const BATCH_SIZE: &str = "blip2idc_batch_size";
pub const FETCH_SECONDS: &str = "blip2idc_fetch_seconds";
pub const DECODE_SECONDS: &str = "blip2idc_decode_seconds";
pub const INFERENCE_SECONDS: &str = "blip2idc_inference_seconds";
pub const STORE_SECONDS: &str = "blip2idc_store_seconds";
pub const END_TO_END_SECONDS: &str = "blip2idc_end_to_end_seconds";
pub const PARTITION_LAG: &str = "blip2idc_partition_lag";
pub const IN_FLIGHT: &str = "blip2idc_in_flight_events";
pub const SECONDS_SINCE_PROGRESS: &str = "blip2idc_seconds_since_progress";
pub const STALLED: &str = "blip2idc_stalled";
pub const IN_FLIGHT_BYTES: &str = "blip2idc_in_flight_bytes";
pub const BREAKER_TRIPPED: &str = "blip2idc_breaker_tripped";
pub const PAUSED: &str = "blip2idc_consumer_paused";
pub const COMMITS: &str = "blip2idc_offset_commits_total";
pub const MODEL_SWAPS: &str = "blip2idc_model_swaps_total";
pub const MODEL_SWAP_FAILURES: &str = "blip2idc_model_swap_failures_total";
pub const MODEL_LOADED: &str = "blip2idc_model_loaded_info";
pub const MODEL_STALE: &str = "blip2idc_model_stale";
pub const PAIRS_ANALYSED: &str = "blip2idc_pairs_analysed_total";
pub const MODEL_SKIPPED: &str = "blip2idc_model_skipped_total";
pub const EDIT_ACTIONS: &str = "blip2idc_edit_actions_total";
pub const ANALYSIS_SECONDS: &str = "blip2idc_analysis_seconds";
pub const REVIEW_LOGINS: &str = "blip2idc_review_logins_total";
pub const REVIEW_DECISIONS: &str = "blip2idc_review_decisions_total";
pub const REVIEW_REQUEST_SECONDS: &str = "blip2idc_review_request_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once (later calls return the same handle) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
                .expect("static bucket lists are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CONSUMED, "Events read from the input topic.");
    describe_counter!(CAPTIONED, "Captions durably stored in PostgreSQL.");
    describe_counter!(DEAD_LETTERED, "Events sent to the dead-letter topic, by error kind.");
    describe_gauge!(
        DEAD_LETTERS_PENDING,
        "Dead letters produced but not yet acknowledged (rising: the dead-letter topic is unavailable)."
    );
    describe_counter!(TRANSIENT_RETRIES, "Retries after transient failures, by pipeline step.");
    describe_histogram!(BATCH_SIZE, "Pairs per captioning batch.");
    describe_histogram!(FETCH_SECONDS, Unit::Seconds, "Time to fetch both images of a pair from S3.");
    describe_histogram!(DECODE_SECONDS, Unit::Seconds, "Time to decode and preprocess a pair.");
    describe_histogram!(INFERENCE_SECONDS, Unit::Seconds, "Model time per batch.");
    describe_histogram!(STORE_SECONDS, Unit::Seconds, "Time to store a batch in PostgreSQL.");
    describe_histogram!(END_TO_END_SECONDS, Unit::Seconds, "From consumption to durable storage, per event.");
    describe_gauge!(PARTITION_LAG, "Consumer lag per partition (messages), from librdkafka statistics.");
    describe_gauge!(IN_FLIGHT, "Events consumed but not yet stored or dead-lettered.");
    describe_gauge!(
        SECONDS_SINCE_PROGRESS,
        "Seconds since an event was last stored or dead-lettered while events are waiting (0 when idle)."
    );
    describe_gauge!(
        IN_FLIGHT_BYTES,
        "Bytes reserved by events in flight (fetched objects, decoding, pixel values) of pipeline.max_in_flight_bytes."
    );
    describe_gauge!(STALLED, "1 while events wait and none finished for pipeline.stall_timeout.");
    describe_gauge!(BREAKER_TRIPPED, "1 while the group's dead-letter breaker is tripped and this consumer holds.");
    describe_gauge!(PAUSED, "1 while the input partitions are paused for backpressure.");
    describe_counter!(COMMITS, "Offset commits, by outcome.");
    describe_counter!(MODEL_SWAPS, "Hot swaps of the captioning model.");
    describe_counter!(
        MODEL_SWAP_FAILURES,
        "Promoted adapters that could not be loaded (marked in model_versions.load_error; the running one stays)."
    );
    describe_gauge!(MODEL_LOADED, "1 for the model version this consumer captions with (label version).");
    describe_gauge!(MODEL_STALE, "1 while this consumer runs another version than the registry's promoted one.");
    describe_counter!(REVIEW_LOGINS, "Sign-ins to the review app, by outcome (ok, failed, limited).");
    describe_counter!(
        REVIEW_DECISIONS,
        "Review decisions written as labels, by decision (accepted, corrected, undone)."
    );
    describe_histogram!(REVIEW_REQUEST_SECONDS, Unit::Seconds, "Review app response time, by page.");
    describe_counter!(PAIRS_ANALYSED, "Pairs compared by the change analysis, by outcome (changed = true/false).");
    describe_counter!(MODEL_SKIPPED, "Pairs found unchanged and stored without running the model.");
    describe_counter!(EDIT_ACTIONS, "Stored pairs per C2PA edit action named (label action).");
    describe_histogram!(
        ANALYSIS_SECONDS,
        Unit::Seconds,
        "Time to compare a pair's thumbnails (alignment and difference; the thumbnails are made while decoding)."
    );
}
