//! Per-partition offset tracking: the contiguous "done" watermark that is safe to commit.
//!
//! Events finish out of order (a small image is fetched before a big one; a dead-lettered event is done
//! long before its batch-mates are stored). An offset may only be committed once it *and every earlier
//! offset of its partition* are durably handled, so each partition keeps the set of offsets still in
//! flight; the commit position is the lowest of them, or one past the highest offset seen when none is
//! in flight.
//!
//! Partitions carry an epoch that changes on every assignment, so a completion that belongs to an earlier
//! assignment of the same partition (revoked, then handed back) can never move the new watermark.

use std::collections::{BTreeSet, HashMap};

/// A topic-partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

/// Proof that an offset was registered; hand it back to [`OffsetTracker::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub tp: TopicPartition,
    pub offset: i64,
    epoch: u64,
}

#[derive(Debug, Default)]
struct PartitionState {
    epoch: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset registered in this epoch.
    next: Option<i64>,
    /// The last position the broker acknowledged as committed.
    acked: Option<i64>,
}

impl PartitionState {
    fn position(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }
}

/// The watermarks of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    next_epoch: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `tps` afresh (a new epoch each), as after an assignment.
    pub fn assign(&mut self, tps: impl IntoIterator<Item = TopicPartition>) {
        for tp in tps {
            self.next_epoch += 1;
            self.partitions.insert(tp, PartitionState { epoch: self.next_epoch, ..Default::default() });
        }
    }

    /// Stops tracking `tps`; their in-flight events can no longer move any watermark.
    pub fn revoke<'a>(&mut self, tps: impl IntoIterator<Item = &'a TopicPartition>) {
        for tp in tps {
            self.partitions.remove(tp);
        }
    }

    /// The current assignment epoch of `tp` (`None` when not assigned).
    pub fn epoch_of(&self, tp: &TopicPartition) -> Option<u64> {
        self.partitions.get(tp).map(|s| s.epoch)
    }

    /// Records a consumed offset as in flight. Returns `None` when the partition is not assigned (a
    /// message that raced a revoke); such a message must not be processed further.
    pub fn register(&mut self, tp: &TopicPartition, offset: i64) -> Option<Ticket> {
        let epoch = self.epoch_of(tp)?;
        self.register_in(tp, offset, epoch)
    }

    /// [`register`](Self::register) for a message received during assignment `epoch`: `None` when
    /// the partition has been revoked (or revoked and assigned again) since.
    pub fn register_in(&mut self, tp: &TopicPartition, offset: i64, epoch: u64) -> Option<Ticket> {
        let state = self.partitions.get_mut(tp).filter(|s| s.epoch == epoch)?;
        state.in_flight.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Ticket { tp: tp.clone(), offset, epoch: state.epoch })
    }

    /// Marks a ticket's offset as durably handled. Returns false when the ticket is stale (its partition
    /// was revoked or re-assigned since it was registered).
    pub fn complete(&mut self, ticket: &Ticket) -> bool {
        match self.partitions.get_mut(&ticket.tp) {
            Some(state) if state.epoch == ticket.epoch => state.in_flight.remove(&ticket.offset),
            _ => false,
        }
    }

    /// The commit position (next offset to consume) of every partition that has one.
    pub fn positions(&self) -> Vec<(TopicPartition, i64)> {
        let mut v: Vec<_> =
            self.partitions.iter().filter_map(|(tp, s)| s.position().map(|p| (tp.clone(), p))).collect();
        v.sort();
        v
    }

    /// Positions the broker has not acknowledged yet: a commit that failed or is still under way is
    /// sent again by the next call (commits are idempotent), so a failed commit is retried.
    pub fn unacknowledged(&self) -> Vec<(TopicPartition, i64)> {
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(tp, s)| s.position().filter(|p| s.acked != Some(*p)).map(|p| (tp.clone(), p)))
            .collect();
        v.sort();
        v
    }

    /// Records positions the broker acknowledged (from the commit callback). A position counts as
    /// committed only from here on.
    pub fn acknowledge(&mut self, positions: &[(TopicPartition, i64)]) {
        for (tp, p) in positions {
            if let Some(s) = self.partitions.get_mut(tp) {
                // Acknowledgements can arrive out of order: keep the furthest.
                if s.acked.is_none_or(|a| a < *p) {
                    s.acked = Some(*p);
                }
            }
        }
    }

    /// Positions of the given partitions only (for a commit on revoke).
    pub fn positions_of<'a>(&self, tps: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<(TopicPartition, i64)> {
        tps.into_iter()
            .filter_map(|tp| self.partitions.get(tp).and_then(|s| s.position()).map(|p| (tp.clone(), p)))
            .collect()
    }

    /// Number of events in flight over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Assigned partitions.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        let mut v: Vec<_> = self.partitions.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn watermark_waits_for_the_lowest_in_flight_offset() {
        let mut t = OffsetTracker::new();
        t.assign([tp(0)]);
        let a = t.register(&tp(0), 10).unwrap();
        let b = t.register(&tp(0), 11).unwrap();
        let c = t.register(&tp(0), 12).unwrap();
        assert_eq!(t.positions(), vec![(tp(0), 10)]);
        assert!(t.complete(&c));
        assert!(t.complete(&b));
        assert_eq!(t.positions(), vec![(tp(0), 10)], "10 still in flight: nothing past it may commit");
        assert!(t.complete(&a));
        assert_eq!(t.positions(), vec![(tp(0), 13)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.assign([tp(0), tp(1)]);
        let a = t.register(&tp(0), 0).unwrap();
        let _b = t.register(&tp(1), 5).unwrap();
        t.complete(&a);
        assert_eq!(t.positions(), vec![(tp(0), 1), (tp(1), 5)]);
    }

    #[test]
    fn positions_are_resent_until_the_broker_acknowledges_them() {
        let mut t = OffsetTracker::new();
        t.assign([tp(0), tp(1)]);
        assert!(t.unacknowledged().is_empty(), "nothing consumed, nothing to commit");
        let a = t.register(&tp(0), 3).unwrap();
        assert_eq!(t.unacknowledged(), vec![(tp(0), 3)]);
        // The commit failed (no acknowledgement): the next round sends it again.
        assert_eq!(t.unacknowledged(), vec![(tp(0), 3)]);
        t.acknowledge(&[(tp(0), 3)]);
        assert!(t.unacknowledged().is_empty());
        t.complete(&a);
        t.register(&tp(1), 0).unwrap();
        assert_eq!(t.unacknowledged(), vec![(tp(0), 4), (tp(1), 0)]);
        // A late acknowledgement of an older position does not undo a newer one.
        t.acknowledge(&[(tp(0), 4)]);
        t.acknowledge(&[(tp(0), 3)]);
        assert_eq!(t.unacknowledged(), vec![(tp(1), 0)]);
    }

    #[test]
    fn stale_tickets_cannot_move_a_reassigned_partition() {
        let mut t = OffsetTracker::new();
        t.assign([tp(0)]);
        let old = t.register(&tp(0), 7).unwrap();
        t.revoke([&tp(0)]);
        assert!(t.register(&tp(0), 8).is_none(), "unassigned partitions accept nothing");
        t.assign([tp(0)]);
        let new = t.register(&tp(0), 7).unwrap();
        assert!(!t.complete(&old), "a ticket from the previous assignment is ignored");
        assert_eq!(t.positions(), vec![(tp(0), 7)]);
        assert!(t.complete(&new));
        assert_eq!(t.positions(), vec![(tp(0), 8)]);
    }

    #[test]
    fn positions_of_selects_partitions() {
        let mut t = OffsetTracker::new();
        t.assign([tp(0), tp(1), tp(2)]);
        t.register(&tp(0), 1);
        t.register(&tp(2), 9);
        assert_eq!(t.positions_of([&tp(2), &tp(1)]), vec![(tp(2), 9)]);
    }
}
