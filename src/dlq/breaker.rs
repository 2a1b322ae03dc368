//! The dead-letter-rate circuit breaker.
//!
//! A healthy stream dead-letters a trickle; a bad deploy (wrong bucket list, broken decoder, expired
//! credentials misread as "missing") dead-letters everything. The breaker keeps the last `window`
//! outcomes and trips when more than `max_ratio` of them were dead-lettered (once at least `min_events`
//! were seen), so the consumer stops loudly instead of emptying the topic into the dead-letter queue.

use std::collections::VecDeque;

/// Sliding-window dead-letter ratio.
#[derive(Debug)]
pub struct Breaker {
    window: usize,
    max_ratio: f64,
    min_events: usize,
    outcomes: VecDeque<bool>,
    dead: usize,
}

/// The breaker's verdict on the outcome just recorded.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok,
    /// Too many dead letters: stop consuming. Carries the observed ratio and sample size.
    Trip {
        ratio: f64,
        events: usize,
    },
}

impl Breaker {
    pub fn new(window: usize, max_ratio: f64, min_events: usize) -> Self {
        Breaker { window: window.max(1), max_ratio, min_events, outcomes: VecDeque::new(), dead: 0 }
    }

    fn push(&mut self, dead: bool) {
        if self.outcomes.len() == self.window && self.outcomes.pop_front() == Some(true) {
            self.dead -= 1;
        }
        self.outcomes.push_back(dead);
        if dead {
            self.dead += 1;
        }
    }

    /// Records a successfully stored event.
    pub fn record_ok(&mut self) {
        self.push(false);
    }

    /// Asks to dead-letter one event. When this would put the ratio over the limit the breaker trips
    /// and the outcome is *not* recorded: the caller must not dead-letter (or commit) that event.
    pub fn record_dead_letter(&mut self) -> Verdict {
        self.push(true);
        let events = self.outcomes.len();
        let ratio = self.dead as f64 / events as f64;
        if events >= self.min_events && ratio > self.max_ratio {
            // Undo: the event stays unhandled and will be redelivered after the fix.
            self.outcomes.pop_back();
            self.dead -= 1;
            return Verdict::Trip { ratio, events };
        }
        Verdict::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trickle_of_dead_letters_passes() {
        let mut b = Breaker::new(100, 0.5, 10);
        for i in 0..1000 {
            if i % 5 == 0 {
                assert_eq!(b.record_dead_letter(), Verdict::Ok);
            } else {
                b.record_ok();
            }
        }
    }

    #[test]
    fn all_bad_trips_after_min_events() {
        let mut b = Breaker::new(100, 0.5, 10);
        for _ in 0..9 {
            assert_eq!(b.record_dead_letter(), Verdict::Ok, "below min_events nothing trips");
        }
        assert!(matches!(b.record_dead_letter(), Verdict::Trip { events: 10, .. }));
    }

    #[test]
    fn window_forgets_old_outcomes() {
        let mut b = Breaker::new(10, 0.5, 10);
        for _ in 0..5 {
            b.record_dead_letter();
        }
        for _ in 0..10 {
            b.record_ok();
        }
        for _ in 0..5 {
            assert_eq!(b.record_dead_letter(), Verdict::Ok);
        }
        assert!(matches!(b.record_dead_letter(), Verdict::Trip { .. }));
    }
}
