//! In-order offset tracking. Records of one partition finish in any order, but an offset may be
//! stored only when that record and every record before it have an outcome that is safe in Kafka.
//! The tracker keeps the unfinished offsets of each partition and returns how far storing may go.
//!
//! Each partition's state belongs to one assignment generation: after a rebalance, completions
//! from the previous ownership are ignored, because the new owner re-sends what had no outcome.

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    /// Unfinished offsets and the payload bytes each one holds.
    pending: BTreeMap<i64, usize>,
    first_begun: Option<i64>,
    highest_begun: Option<i64>,
    stored_through: Option<i64>,
}

/// Unfinished offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
    in_flight: usize,
    bytes: usize,
}

impl OffsetTracker {
    /// Records that work on `offset`, holding `bytes` of payload, has started under assignment
    /// `generation`.
    pub fn begin(
        &mut self,
        partition: &TopicPartition,
        offset: i64,
        generation: u64,
        bytes: usize,
    ) {
        let state = self.partitions.entry(partition.clone()).or_default();
        if state.generation != generation {
            self.in_flight -= state.pending.len();
            self.bytes -= state.pending.values().sum::<usize>();
            *state = PartitionState {
                generation,
                ..PartitionState::default()
            };
        }
        if state.pending.insert(offset, bytes).is_none() {
            self.in_flight += 1;
            self.bytes += bytes;
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
        if state.generation != generation {
            return None;
        }
        let bytes = state.pending.remove(&offset)?;
        self.in_flight -= 1;
        self.bytes -= bytes;

        let finished_through = match state.pending.first_key_value() {
            Some((&lowest_pending, _)) => lowest_pending - 1,
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

    /// Payload bytes of the records in flight across all partitions.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records in flight in one partition.
    pub fn in_flight_in(&self, partition: &TopicPartition) -> usize {
        self.partitions
            .get(partition)
            .map_or(0, |state| state.pending.len())
    }

    /// Drops the state of a partition that is no longer assigned: its unfinished records are the
    /// next owner's, and their later completions change nothing.
    pub fn forget(&mut self, partition: &TopicPartition) {
        if let Some(state) = self.partitions.remove(partition) {
            self.in_flight -= state.pending.len();
            self.bytes -= state.pending.values().sum::<usize>();
        }
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
            tracker.begin(&p, offset, 1, 10);
        }
        assert_eq!(tracker.finish(&p, 12, 1), None);
        assert_eq!(tracker.finish(&p, 11, 1), None);
        assert_eq!(tracker.finish(&p, 10, 1), Some(12));
        assert_eq!(tracker.finish(&p, 13, 1), Some(13));
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.bytes(), 0);
    }

    #[test]
    fn counts_per_partition_and_forgets_revoked_ones() {
        let mut tracker = OffsetTracker::default();
        tracker.begin(&partition(0), 1, 1, 100);
        tracker.begin(&partition(0), 2, 1, 50);
        tracker.begin(&partition(1), 1, 1, 7);
        assert_eq!(tracker.in_flight_in(&partition(0)), 2);
        assert_eq!(tracker.bytes(), 157);
        tracker.forget(&partition(0));
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.bytes(), 7);
        assert_eq!(tracker.finish(&partition(0), 1, 1), None);
        assert_eq!(tracker.in_flight_in(&partition(0)), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::default();
        tracker.begin(&partition(0), 5, 1, 10);
        tracker.begin(&partition(1), 7, 1, 10);
        assert_eq!(tracker.finish(&partition(1), 7, 1), Some(7));
        assert_eq!(tracker.in_flight(), 1);
    }

    #[test]
    fn ignores_completions_from_an_earlier_generation() {
        let mut tracker = OffsetTracker::default();
        let p = partition(0);
        tracker.begin(&p, 1, 1, 10);
        tracker.begin(&p, 2, 1, 10);
        // Revoked and assigned again: the records are fetched again from the committed offset.
        tracker.begin(&p, 1, 2, 10);
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.finish(&p, 2, 1), None);
        assert_eq!(tracker.finish(&p, 1, 2), Some(1));
    }

    #[test]
    fn unknown_or_repeated_completion_changes_nothing() {
        let mut tracker = OffsetTracker::default();
        let p = partition(0);
        assert_eq!(tracker.finish(&p, 3, 1), None);
        tracker.begin(&p, 3, 1, 10);
        assert_eq!(tracker.finish(&p, 3, 1), Some(3));
        assert_eq!(tracker.finish(&p, 3, 1), None);
    }
}
