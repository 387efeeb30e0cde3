//! The retry schedule: one tier per delay, each backed by its own topic. A schedule that cannot
//! work (empty, a zero delay, delays that do not rise, a tier name Kafka cannot use) cannot be
//! built.

use std::time::Duration;

/// One delay step of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    /// The delay as written in configuration, such as `10s`; part of the topic name.
    pub name: String,
    pub delay: Duration,
    /// The topic that contains deliveries waiting on this tier.
    pub topic: String,
}

/// The tiers in rising order of delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    tiers: Vec<RetryTier>,
}

/// Parses a delay such as `500ms`, `10s`, `5m`, `2h` or `1d`.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!(
            "invalid delay {text:?}: write a whole number and a unit (ms, s, m, h or d), such as 10s"
        )
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(unit_ms).ok_or_else(invalid)?;
    Ok(Duration::from_millis(millis))
}

impl RetrySchedule {
    /// Builds the schedule from delays such as `["10s", "1m"]`, with topics `<topic_prefix><delay>`.
    pub fn try_new(delays: &[String], topic_prefix: &str) -> Result<Self, String> {
        if delays.is_empty() {
            return Err("must list at least one delay".to_owned());
        }
        let mut tiers: Vec<RetryTier> = Vec::with_capacity(delays.len());
        for text in delays {
            let delay = parse_delay(text)?;
            if delay.is_zero() {
                return Err(format!("delay {text:?} must be greater than zero"));
            }
            if let Some(previous) = tiers.last()
                && delay <= previous.delay
            {
                return Err(format!(
                    "delays must rise: {text:?} comes after {:?}",
                    previous.name
                ));
            }
            tiers.push(RetryTier {
                name: text.clone(),
                delay,
                topic: format!("{topic_prefix}{text}"),
            });
        }
        Ok(Self { tiers })
    }

    pub fn tiers(&self) -> &[RetryTier] {
        &self.tiers
    }

    pub fn get(&self, index: usize) -> Option<&RetryTier> {
        self.tiers.get(index)
    }

    /// Returns the position of the tier named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|tier| tier.name == name)
    }

    /// Chooses the tier for the next retry: the one after `current` (the first when there is
    /// none), or a later one when the endpoint asked to wait longer than that tier's delay.
    /// Returns `None` when the schedule is exhausted.
    pub fn next_tier(
        &self,
        current: Option<usize>,
        wait_at_least: Option<Duration>,
    ) -> Option<usize> {
        let first_candidate = current.map_or(0, |index| index + 1);
        if first_candidate >= self.tiers.len() {
            return None;
        }
        let Some(wait) = wait_at_least else {
            return Some(first_candidate);
        };
        // Past the longest tier, the longest tier is used and the due time carries the rest.
        let long_enough = self.tiers[first_candidate..]
            .iter()
            .position(|tier| tier.delay >= wait);
        Some(long_enough.map_or(self.tiers.len() - 1, |offset| first_candidate + offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(delays: &[&str]) -> RetrySchedule {
        let delays: Vec<String> = delays.iter().map(|d| (*d).to_owned()).collect();
        RetrySchedule::try_new(&delays, "herald.retry.").expect("valid schedule")
    }

    #[test]
    fn parses_delays_with_units() {
        assert_eq!(parse_delay("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_delay("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_delay("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_delay("1d"), Ok(Duration::from_secs(86_400)));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10 s",
            "-1s",
            "10sec",
            "99999999999999999999d",
        ] {
            assert!(parse_delay(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_schedules_cannot_be_built() {
        assert!(RetrySchedule::try_new(&[], "p.").is_err());
        assert!(RetrySchedule::try_new(&["0s".into()], "p.").is_err());
        assert!(RetrySchedule::try_new(&["1m".into(), "30s".into()], "p.").is_err());
        assert!(RetrySchedule::try_new(&["1m".into(), "60s".into()], "p.").is_err());
    }

    #[test]
    fn tiers_have_topics_named_after_delays() {
        let schedule = schedule(&["10s", "1m"]);
        let topics: Vec<&str> = schedule.tiers().iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(topics, ["herald.retry.10s", "herald.retry.1m"]);
    }

    #[test]
    fn next_tier_walks_the_schedule_then_ends() {
        let schedule = schedule(&["1s", "2s", "4s"]);
        assert_eq!(schedule.next_tier(None, None), Some(0));
        assert_eq!(schedule.next_tier(Some(0), None), Some(1));
        assert_eq!(schedule.next_tier(Some(1), None), Some(2));
        assert_eq!(schedule.next_tier(Some(2), None), None);
    }

    #[test]
    fn retry_after_skips_to_a_tier_long_enough() {
        let schedule = schedule(&["1s", "2s", "4s"]);
        assert_eq!(
            schedule.next_tier(None, Some(Duration::from_secs(3))),
            Some(2)
        );
        assert_eq!(
            schedule.next_tier(None, Some(Duration::from_secs(1))),
            Some(0)
        );
        assert_eq!(
            schedule.next_tier(None, Some(Duration::from_secs(60))),
            Some(2)
        );
        assert_eq!(
            schedule.next_tier(Some(2), Some(Duration::from_secs(1))),
            None
        );
    }

    #[test]
    fn next_tier_never_goes_back_for_any_wait() {
        let schedule = schedule(&["1s", "10s", "1m", "5m"]);
        for current in [None, Some(0), Some(1), Some(2)] {
            for wait_ms in (0..400_000).step_by(997) {
                let next = schedule.next_tier(current, Some(Duration::from_millis(wait_ms)));
                let next = next.expect("tiers remain");
                assert!(current.is_none_or(|c| next > c), "{current:?} {wait_ms}");
            }
        }
    }
}
