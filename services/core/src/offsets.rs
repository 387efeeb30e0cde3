//! In-order offset tracking. Records of one partition finish in any order, but an offset may be
//! stored only when that record and every record before it have an outcome that is safe in Kafka.
//! The tracker keeps the unfinished offsets of each partition and returns how far storing may go.
//!
//! Each partition's state belongs to one assignment generation: after a rebalance, completions
//! from the previous ownership are ignored, because the new owner re-sends what had no outcome.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    pending: BTreeSet<i64>,
    first_begun: Option<i64>,
    highest_begun: Option<i64>,
    stored_through: Option<i64>,
}

/// Unfinished offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    in_flight: usize,
}

impl OffsetTracker {
    /// Records that work on `offset` has started under assignment `generation`.
    pub fn begin(&mut self, partition: &TopicPartition, offset: i64, generation: u64) {
        let state = self.partitions.entry(partition.clone()).or_default();
        if state.generation != generation {
            self.in_flight -= state.pending.len();
            *state = PartitionState {
                generation,
                ..PartitionState::default()
            };
        }
        if state.pending.insert(offset) {
            self.in_flight += 1;
        }
        state.first_begun = Some(state.first_begun.map_or(offset, |first| first.min(offset)));
        state.highest_begun = state.highest_begun.max(Some(offset));
    }

    /// Records that `offset` has an outcome. Returns the offset up to which everything is finished
    /// when that moved forward, which is what to hand to `store_offset`.
    pub fn finish(
        &mut self,
        partition: &TopicPartition,
        offset: i64,
        generation: u64,
    ) -> Option<i64> {
        let state = self.partitions.get_mut(partition)?;
        if state.generation != generation || !state.pending.remove(&offset) {
            return None;
        }
        self.in_flight -= 1;

        let finished_through = match state.pending.first() {
            Some(&lowest_pending) => lowest_pending - 1,
            None => state.highest_begun?,
        };
        if state
            .stored_through
            .is_some_and(|stored| stored >= finished_through)
        {
            return None;
        }
        // Offsets before the first record of this generation were never ours to store.
        if state
            .first_begun
            .is_none_or(|first| finished_through < first)
        {
            return None;
        }
        state.stored_through = Some(finished_through);
        Some(finished_through)
    }

    /// Records in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(number: i32) -> TopicPartition {
        ("events".to_owned(), number)
    }

    #[test]
    fn stores_only_a_finished_prefix() {
        let mut tracker = OffsetTracker::default();
        let p = partition(0);
        for offset in 10..14 {
            tracker.begin(&p, offset, 1);
        }
        assert_eq!(tracker.finish(&p, 12, 1), None);
        assert_eq!(tracker.finish(&p, 11, 1), None);
        assert_eq!(tracker.finish(&p, 10, 1), Some(12));
        assert_eq!(tracker.finish(&p, 13, 1), Some(13));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::default();
        tracker.begin(&partition(0), 5, 1);
        tracker.begin(&partition(1), 7, 1);
        assert_eq!(tracker.finish(&partition(1), 7, 1), Some(7));
        assert_eq!(tracker.in_flight(), 1);
    }

    #[test]
    fn ignores_completions_from_an_earlier_generation() {
        let mut tracker = OffsetTracker::default();
        let p = partition(0);
        tracker.begin(&p, 1, 1);
        tracker.begin(&p, 2, 1);
        // Revoked and assigned again: the records are fetched again from the committed offset.
        tracker.begin(&p, 1, 2);
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.finish(&p, 2, 1), None);
        assert_eq!(tracker.finish(&p, 1, 2), Some(1));
    }

    #[test]
    fn unknown_or_repeated_completion_changes_nothing() {
        let mut tracker = OffsetTracker::default();
        let p = partition(0);
        assert_eq!(tracker.finish(&p, 3, 1), None);
        tracker.begin(&p, 3, 1);
        assert_eq!(tracker.finish(&p, 3, 1), Some(3));
        assert_eq!(tracker.finish(&p, 3, 1), None);
    }
}
