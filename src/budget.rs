//! The byte budget: how much memory the events in flight may hold (`pipeline.max_in_flight_bytes`).
//!
//! Counted in KiB, in two halves so that no event can wait on memory another one holds while waiting
//! itself (which could deadlock):
//! - **fetch**: a pair reserves twice `s3.max_object_bytes` before its two GETs start (one reservation,
//!   so half-fetched pairs never block each other), then shrinks it to the bytes actually received;
//!   the rest is held until the pair is decoded;
//! - **decode**: a pair that has a decode slot reserves what decoding and preprocessing will allocate,
//!   estimated from the image headers before any pixel exists ([`crate::decode::PairPlan::bytes`]), then shrinks it to its `pixel_values`,
//!   which it holds until captioned.
//!
//! A request larger than its half is clamped to the half (that event then runs alone); the pipeline
//! rejects a pair whose decoding would need more than the half (`image_too_large`) before asking, and
//! the configuration is refused at start-up unless the largest pair the decode limits allow fits.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes held by one event; released when dropped.
#[derive(Debug)]
pub struct Reservation(OwnedSemaphorePermit);

impl Reservation {
    /// Keeps `bytes` (rounded up to KiB) and gives the rest back at once.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = kib(bytes).max(1).min(self.0.num_permits());
        let _released = self.0.split(self.0.num_permits() - keep);
    }

    pub fn bytes(&self) -> u64 {
        self.0.num_permits() as u64 * 1024
    }
}

/// The two halves of `pipeline.max_in_flight_bytes`.
#[derive(Debug)]
pub struct ByteBudget {
    fetch: Arc<Semaphore>,
    decode: Arc<Semaphore>,
    half_kib: usize,
}

fn kib(bytes: u64) -> usize {
    bytes.div_ceil(1024) as usize
}

impl ByteBudget {
    pub fn new(total_bytes: u64) -> ByteBudget {
        let half_kib = kib(total_bytes / 2).max(1);
        ByteBudget { fetch: Arc::new(Semaphore::new(half_kib)), decode: Arc::new(Semaphore::new(half_kib)), half_kib }
    }

    /// Reserves `bytes` of the fetch half (waits while it is spent).
    pub async fn fetch(&self, bytes: u64) -> Reservation {
        self.take(&self.fetch, bytes).await
    }

    /// Reserves `bytes` of the decode half (waits while it is spent).
    pub async fn decode(&self, bytes: u64) -> Reservation {
        self.take(&self.decode, bytes).await
    }

    async fn take(&self, pool: &Arc<Semaphore>, bytes: u64) -> Reservation {
        let n = kib(bytes).clamp(1, self.half_kib) as u32;
        Reservation(pool.clone().acquire_many_owned(n).await.expect("budget semaphores are never closed"))
    }

    /// The size of each half, in bytes.
    pub fn half_bytes(&self) -> u64 {
        self.half_kib as u64 * 1024
    }

    /// Bytes reserved now, over both halves.
    pub fn in_use(&self) -> u64 {
        (2 * self.half_kib - self.fetch.available_permits() - self.decode.available_permits()) as u64 * 1024
    }
}

/// What decoding and preprocessing a pair allocates at most, for decoded sizes `a` and `b` and a model
/// input of `out`: both decoded images (alive at once when the pair is split across threads), the
/// streaming resampler's buffers, the model input ([`crate::decode::PairPlan::bytes`]).
pub fn pair_bytes(a: (usize, usize), b: (usize, usize), out: (usize, usize)) -> u64 {
    let images = 3 * (a.0 * a.1 + b.0 * b.1);
    let streaming = blip2idc_resample::StackSqueeze::estimate_bytes(a, b, out);
    (images + streaming + out.0 * out.1 * (3 + 3 * 4)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_the_budget_and_shrink() {
        let budget = ByteBudget::new(8 << 20); // 4 MiB per half
        let mut a = budget.fetch(3 << 20).await;
        assert_eq!(budget.in_use(), 3 << 20);
        // 2 MiB more does not fit until `a` shrinks.
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.fetch(2 << 20)).await;
        assert!(waiting.is_err(), "over the budget: must wait");
        a.shrink_to(1 << 20);
        assert_eq!(a.bytes(), 1 << 20);
        let b = tokio::time::timeout(Duration::from_millis(50), budget.fetch(2 << 20)).await.expect("fits now");
        assert_eq!(budget.in_use(), 3 << 20);
        // The halves are separate: decoding is not blocked by fetched bytes.
        let c = budget.decode(4 << 20).await;
        assert_eq!(budget.in_use(), 7 << 20);
        drop((a, b, c));
        assert_eq!(budget.in_use(), 0);
        // Larger than a half: clamped, so it runs alone instead of never.
        let huge = budget.decode(1 << 40).await;
        assert_eq!(huge.bytes(), 4 << 20);
    }

    #[test]
    fn a_pair_costs_its_two_images_and_a_little_more() {
        // Two 8192² images: 403 MB of pixels; the streaming buffers (the squeezed rows, the plans)
        // add about 3 %, not the five full-size copies stacking used to make.
        let images = 3 * 2 * 8192 * 8192;
        let cost = pair_bytes((8192, 8192), (8192, 8192), (224, 224));
        assert!(cost > images && cost < images / 100 * 105, "{cost}");
        // A 12 MP original over a 0.75-scale copy: the original's resize adds a ring of rows.
        let (a, b) = ((4000, 3000), (3000, 2250));
        let cost = pair_bytes(a, b, (224, 224));
        assert!(cost < 3 * (12_000_000 + 6_750_000) + (16 << 20), "{cost}");
    }
}
