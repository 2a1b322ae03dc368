//! blip2idc: tells what changed between an original image and a republished copy.
//!
//! Data flow of the service (`blip2idc serve`):
//! [`source`] (Kafka) → [`pipeline::prepare`] ([`event`] parse, [`fetch`] from S3, [`decode`]) →
//! [`batch`] → [`caption`] (the BLIP2IDC [`model`] on its own thread) → [`store`] (PostgreSQL) →
//! commit (offsets, [`source::offsets`]); rejected events go to the [`dlq`].
//! [`eval`] scores captions as pycocoevalcap does; [`train`] fine-tunes LoRA adapters.

/// The allocator every binary of the crate uses (see Cargo.toml).
pub type GlobalAllocator = mimalloc::MiMalloc;

pub mod admin;
pub mod batch;
pub mod caption;
pub mod config;
pub mod decode;
pub mod devtools;
pub mod dlq;
pub mod error;
pub mod eval;
pub mod event;
pub mod fetch;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod retry;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod train;
