//! Messages received but still waiting for a permit (backpressure), each with the assignment epoch of
//! its partition when it was received.
//!
//! After a rebalance only the messages of partitions revoked (or revoked and assigned again) are
//! dropped, to be redelivered from the committed position; the kept partitions' messages stay, in
//! order. (Dropping those too would let the kept partitions' commits pass events never processed:
//! with incremental, cooperative rebalancing the partitions are not re-fetched from the commit.)

use std::collections::VecDeque;

use rdkafka::message::{Message, OwnedMessage};

use super::offsets::{OffsetTracker, TopicPartition};

/// The waiting messages, oldest first.
#[derive(Default)]
pub struct Stash {
    queue: VecDeque<(u64, OwnedMessage)>,
}

impl Stash {
    /// Queues a message of the current assignment; a message of an unassigned partition is dropped
    /// (returns false).
    pub fn push(&mut self, tracker: &OffsetTracker, m: OwnedMessage) -> bool {
        match tracker.epoch_of(&TopicPartition::new(m.topic(), m.partition())) {
            Some(epoch) => {
                self.queue.push_back((epoch, m));
                true
            }
            None => false,
        }
    }

    /// The oldest message and its epoch.
    pub fn pop(&mut self) -> Option<(u64, OwnedMessage)> {
        self.queue.pop_front()
    }

    /// Puts back a message just popped (no permit for it yet).
    pub fn unpop(&mut self, entry: (u64, OwnedMessage)) {
        self.queue.push_front(entry);
    }

    /// Drops the messages whose partition is no longer in the epoch they were received in; returns
    /// how many were dropped.
    pub fn retain_assigned(&mut self, tracker: &OffsetTracker) -> usize {
        let before = self.queue.len();
        self.queue
            .retain(|(epoch, m)| tracker.epoch_of(&TopicPartition::new(m.topic(), m.partition())) == Some(*epoch));
        before - self.queue.len()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    fn msg(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, partition, offset, None)
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn offsets(stash: &mut Stash) -> Vec<(i32, i64)> {
        let mut v = Vec::new();
        while let Some((_, m)) = stash.pop() {
            v.push((m.partition(), m.offset()));
        }
        v
    }

    #[test]
    fn an_incremental_revoke_keeps_the_other_partitions_waiting_messages() {
        let mut tracker = OffsetTracker::new();
        tracker.assign([tp(0), tp(1), tp(2)]);
        let mut stash = Stash::default();
        for (p, o) in [(0, 5), (1, 7), (2, 3), (1, 8)] {
            assert!(stash.push(&tracker, msg(p, o)));
        }
        // Cooperative rebalance: only partition 0 moves away.
        tracker.revoke([&tp(0)]);
        assert_eq!(stash.retain_assigned(&tracker), 1);
        assert_eq!(offsets(&mut stash), vec![(1, 7), (2, 3), (1, 8)], "kept partitions keep their messages, in order");
    }

    #[test]
    fn an_eager_rebalance_drops_messages_of_the_previous_assignment() {
        let mut tracker = OffsetTracker::new();
        tracker.assign([tp(0), tp(1)]);
        let mut stash = Stash::default();
        stash.push(&tracker, msg(0, 1));
        stash.push(&tracker, msg(1, 1));
        // Everything revoked, then partition 1 assigned again (a new epoch): both are stale.
        tracker.revoke([&tp(0), &tp(1)]);
        tracker.assign([tp(1)]);
        assert_eq!(stash.retain_assigned(&tracker), 2);
        assert!(stash.is_empty());
        assert!(!stash.push(&tracker, msg(0, 2)), "a message of an unassigned partition is refused");
        assert!(stash.push(&tracker, msg(1, 2)));
        assert_eq!(stash.len(), 1);
    }
}
