//! The batcher: gathers decoded pairs into batches of at most `max_size`, waiting at most `max_wait`
//! after the first pair arrived, whichever comes first.

use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

/// Waits for the next batch. Returns `None` once the channel is closed and empty; a partial batch is
/// returned as soon as the channel closes, so shutdown never waits out `max_wait`. Not
/// cancellation-safe: dropped while waiting, it loses the items it has taken; await it alone.
pub async fn next_batch<T>(rx: &mut Receiver<T>, max_size: usize, max_wait: Duration) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max_size);
    batch.push(first);
    let deadline = Instant::now() + max_wait;
    while batch.len() < max_size {
        // Take whatever is already queued without touching the timer.
        match rx.try_recv() {
            Ok(item) => {
                batch.push(item);
                continue;
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::channel;

    #[tokio::test]
    async fn full_batch_leaves_immediately() {
        let (tx, mut rx) = channel(16);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        let b = next_batch(&mut rx, 4, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(b, vec![0, 1, 2, 3]);
    }

    // Real time (tokio's paused clock needs its test-util feature, which would make `cargo test`
    // rebuild tokio and everything above it): the wait is at least max_wait and ends long before
    // the next item could arrive.
    #[tokio::test]
    async fn partial_batch_leaves_after_max_wait() {
        let (tx, mut rx) = channel(16);
        tx.send(1).await.unwrap();
        let start = Instant::now();
        let b = next_batch(&mut rx, 4, Duration::from_millis(50)).await.unwrap();
        assert_eq!(b, vec![1]);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(5), "{waited:?}");
        drop(tx);
    }

    #[tokio::test]
    async fn closed_channel_flushes_and_ends() {
        let (tx, mut rx) = channel(16);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        drop(tx);
        assert_eq!(next_batch(&mut rx, 4, Duration::from_secs(3600)).await, Some(vec![1, 2]));
        assert_eq!(next_batch(&mut rx, 4, Duration::from_secs(3600)).await, None);
    }
}
