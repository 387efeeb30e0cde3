//! Latency and throughput accounting: one HDR histogram for the whole run and one per second,
//! so the report can show percentiles over time. Latencies are recorded in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The highest latency recorded, in microseconds (10 minutes); larger values are clamped.
const MAX_LATENCY_US: u64 = 600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Deliveries and latency in one second of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondSample {
    pub second: usize,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Latencies of a run, overall and per second since the run started.
pub struct LatencyRecorder {
    overall: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts, so this cannot fail.
    match Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("constant histogram bounds are valid"),
    }
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            overall: new_histogram(),
            per_second: Vec::new(),
        }
    }
}

impl LatencyRecorder {
    /// Records one delivery that arrived `since_start` into the run, `latency` after its
    /// intended send time.
    pub fn record(&mut self, since_start: Duration, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.overall.saturating_record(micros);
        let second = since_start.as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second.push(new_histogram());
        }
        self.per_second[second].saturating_record(micros);
    }

    pub fn overall(&self) -> Percentiles {
        percentiles(&self.overall)
    }

    /// Returns one sample per second from the start of the run to the last delivery.
    pub fn series(&self) -> Vec<SecondSample> {
        self.per_second
            .iter()
            .enumerate()
            .map(|(second, histogram)| {
                let summary = percentiles(histogram);
                SecondSample {
                    second,
                    deliveries: summary.count,
                    p50_ms: summary.p50_ms,
                    p99_ms: summary.p99_ms,
                }
            })
            .collect()
    }
}

/// Summarises a histogram of microseconds in milliseconds; an empty one gives zeros.
pub fn percentiles(histogram: &Histogram<u64>) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Percentiles {
        count: histogram.len(),
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p90_ms: ms(histogram.value_at_quantile(0.90)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    }
}

/// Returns a histogram for the ceiling run, recorded in microseconds like [`LatencyRecorder`].
pub fn histogram() -> Histogram<u64> {
    new_histogram()
}

/// Deliveries per second over `elapsed`; zero for an empty interval.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        count as f64 / seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_latencies() {
        let mut recorder = LatencyRecorder::default();
        for millis in 1..=1000 {
            recorder.record(Duration::ZERO, Duration::from_millis(millis));
        }
        let summary = recorder.overall();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 500.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() <= 1.0, "{summary:?}");
    }

    #[test]
    fn series_has_one_sample_per_second() {
        let mut recorder = LatencyRecorder::default();
        recorder.record(Duration::from_millis(100), Duration::from_millis(5));
        recorder.record(Duration::from_millis(2500), Duration::from_millis(7));
        recorder.record(Duration::from_millis(2600), Duration::from_millis(9));
        let series = recorder.series();
        let counts: Vec<u64> = series.iter().map(|sample| sample.deliveries).collect();
        assert_eq!(counts, [1, 0, 2]);
        assert_eq!(series[1].p99_ms, 0.0);
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut recorder = LatencyRecorder::default();
        recorder.record(Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(recorder.overall().count, 1);
        assert!(recorder.overall().max_ms >= 599_000.0);
    }

    #[test]
    fn rate_handles_empty_intervals() {
        assert_eq!(rate(100, Duration::from_secs(2)), 50.0);
        assert_eq!(rate(100, Duration::ZERO), 0.0);
    }
}
