//! blip2idc: tells what changed between an original image and a republished copy.
//!
//! Data flow of the service (`blip2idc serve`, wired in [`pipeline`]):
//! [`source`] (Kafka) → [`pipeline::prepare`] ([`event`] parse, [`fetch`] from S3 within the
//! [`budget`], [`decode`], [`model::preprocess`]) → [`pipeline::caption`] ([`batch`], [`caption`]:
//! the BLIP2IDC [`model`] on its own thread) → [`pipeline::store`] ([`store`], PostgreSQL) →
//! [`pipeline::outcomes`] (stored or dead-lettered through [`dlq`]) → [`source::commit`].
//! [`eval`] scores captions as pycocoevalcap does; [`train`] fine-tunes LoRA adapters, which
//! [`adapters`] keeps in S3 for the job and for the service's hot swap. ARCHITECTURE.md at the
//! repository's root maps every file.

/// The allocator every binary of the crate uses (see Cargo.toml).
pub type GlobalAllocator = mimalloc::MiMalloc;

/// Process-wide settings every binary makes first thing in `main`, before any other thread starts:
/// [`retain_freed_memory`] and [`model::blas::quiet_idle_threads`].
pub fn setup_process() {
    retain_freed_memory();
    model::blas::quiet_idle_threads();
}

/// Tells the allocator to keep freed memory for reuse instead of returning it to the OS after a
/// second (mimalloc's `purge_delay`). Model steps free and reallocate the same large activation
/// buffers every forward pass; returned pages come back zero-filled by the kernel, which cost a third
/// of a CPU training step. Resident memory then stays at its peak (the peak itself is unchanged).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins. Call it first thing in `main`.
pub fn retain_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe extern "C" {
            fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        }
        /// `mi_option_purge_delay` in mimalloc.h (v2 and v3).
        const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
        // SAFETY: mimalloc is linked as the global allocator; setting an option is thread-safe.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

pub mod adapters;
pub mod admin;
pub mod analysis;
pub mod batch;
pub mod budget;
pub mod caption;
pub mod config;
pub mod decode;
pub mod dlq;
pub mod error;
pub mod eval;
pub mod event;
pub mod fetch;
pub mod health;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod pipeline;
pub mod retry;
pub mod review;
pub mod s3uri;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod train;
