//! An in-memory record of the `webhook-id`s already received, so a request replayed within the
//! timestamp tolerance, or a delivery Herald repeats, is recognised. It lives in one process:
//! several receiver instances, or ids older than its time-to-live, need a shared store such as
//! the receiver's database.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Ids remembered at most, by default; the oldest is forgotten first when more arrive.
pub const DEFAULT_MAX_IDS: usize = 1_000_000;

/// The `webhook-id`s seen within the time-to-live.
#[derive(Debug)]
pub struct ReplayStore {
    ttl: Duration,
    max_ids: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Each id with the time it stops being remembered.
    until: HashMap<String, SystemTime>,
    /// Ids in the order they were first seen, to forget the expired ones cheaply.
    order: VecDeque<(SystemTime, String)>,
}

impl ReplayStore {
    /// Remembers each id for `ttl`, at most [`DEFAULT_MAX_IDS`] ids.
    pub fn new(ttl: Duration) -> Self {
        Self::with_max_ids(ttl, DEFAULT_MAX_IDS)
    }

    /// Remembers each id for `ttl`, at most `max_ids` ids.
    pub fn with_max_ids(ttl: Duration, max_ids: usize) -> Self {
        Self {
            ttl,
            max_ids: max_ids.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Returns how long an id is remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records `id` as seen at `now`; returns `true` the first time within the time-to-live and
    /// `false` for a repeat.
    pub fn first_time(&self, id: &str, now: SystemTime) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.forget_expired(now);
        if seen.until.get(id).is_some_and(|until| *until > now) {
            return false;
        }
        while seen.order.len() >= self.max_ids {
            if let Some((_, oldest)) = seen.order.pop_front() {
                seen.until.remove(&oldest);
            }
        }
        let until = now + self.ttl;
        seen.until.insert(id.to_owned(), until);
        seen.order.push_back((until, id.to_owned()));
        true
    }

    /// Returns how many ids are remembered now.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .until
            .len()
    }

    /// Returns whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seen {
    fn forget_expired(&mut self, now: SystemTime) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((until, id)) = self.order.pop_front()
                && self.until.get(&id) == Some(&until)
            {
                self.until.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn repeats_within_the_ttl_are_recognised() {
        let store = ReplayStore::new(TTL);
        assert!(store.first_time("msg_1", at(1_000)));
        assert!(!store.first_time("msg_1", at(1_300)));
        assert!(store.first_time("msg_2", at(1_300)));
        assert!(
            store.first_time("msg_1", at(1_600)),
            "remembered past its ttl"
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn expired_ids_are_forgotten() {
        let store = ReplayStore::new(TTL);
        for n in 0..100 {
            assert!(store.first_time(&format!("msg_{n}"), at(1_000 + n)));
        }
        assert!(store.first_time("late", at(5_000)));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn replay_store_forgets_oldest_when_full() {
        let store = ReplayStore::with_max_ids(TTL, 2);
        assert!(store.first_time("a", at(1)));
        assert!(store.first_time("b", at(2)));
        assert!(store.first_time("c", at(3)));
        assert_eq!(store.len(), 2);
        assert!(!store.first_time("c", at(4)));
        assert!(
            store.first_time("a", at(5)),
            "forgotten when the store filled"
        );
    }
}
