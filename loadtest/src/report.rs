//! The report of a run: JSON for machines, Markdown for people, and an SVG chart of throughput
//! and latency percentiles over time.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::ceiling::CeilingResult;
use crate::procstat::ProcessUsage;
use crate::scenario::LoadScenario;
use crate::stats::{LatencyRecorder, Percentiles, SecondSample, rate};

/// The harness's own accounting of deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    pub published: u64,
    pub expected: u64,
    /// Distinct deliveries accepted by endpoints, each counted once.
    pub delivered: u64,
    /// Repeated webhook ids that endpoints acknowledged and dropped.
    pub duplicates: u64,
    pub invalid_signatures: u64,
    /// Requests that endpoints failed on purpose, with 503, 429 or 410.
    pub refused_by_endpoints: u64,
    /// Accepted requests whose id the harness did not publish.
    pub unknown_ids: u64,
    pub complete: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: LoadScenario,
    pub date: String,
    pub commit: String,
    pub cores: usize,
    pub accounting: Accounting,
    /// From the start of publishing to the last delivery.
    pub duration_s: f64,
    pub throughput_per_s: f64,
    /// End-to-end latency from each event's intended send time to its receipt.
    pub latency: Percentiles,
    pub ceiling: Option<CeilingResult>,
    /// Herald's throughput as a fraction of the ceiling's.
    pub ceiling_ratio: Option<f64>,
    pub router: ProcessUsage,
    pub sender: ProcessUsage,
    pub series: Vec<SecondSample>,
    /// The reasons the run failed; empty when it passed.
    pub failures: Vec<String>,
}

impl Report {
    pub fn new(
        scenario: &LoadScenario,
        commit: &str,
        accounting: Accounting,
        duration: Duration,
        recorder: &LatencyRecorder,
        ceiling: Option<CeilingResult>,
        (router, sender): (ProcessUsage, ProcessUsage),
    ) -> Self {
        let throughput_per_s = rate(accounting.delivered, duration);
        // A run held to a fixed rate cannot show how close Herald comes to the ceiling.
        let ceiling_ratio = ceiling
            .as_ref()
            .filter(|_| scenario.rate_per_s == 0)
            .filter(|ceiling| ceiling.throughput_per_s > 0.0)
            .map(|ceiling| throughput_per_s / ceiling.throughput_per_s);
        let latency = recorder.overall();
        let mut report = Self {
            scenario: scenario.clone(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            commit: commit.to_owned(),
            cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            accounting,
            duration_s: duration.as_secs_f64(),
            throughput_per_s,
            latency,
            ceiling,
            ceiling_ratio,
            router,
            sender,
            series: recorder.series(),
            failures: Vec::new(),
        };
        report.failures = report.check();
        report
    }

    /// Lists what makes the run fail: missing deliveries, bad signatures, unknown ids, thresholds.
    fn check(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let accounting = &self.accounting;
        if accounting.published < self.scenario.events as u64 {
            failures.push(format!(
                "only {} of {} events were published",
                accounting.published, self.scenario.events
            ));
        }
        if accounting.delivered < accounting.expected {
            failures.push(format!(
                "{} deliveries missing",
                accounting.expected - accounting.delivered
            ));
        }
        if accounting.invalid_signatures > 0 {
            failures.push(format!(
                "{} requests failed signature verification",
                accounting.invalid_signatures
            ));
        }
        // Without crashes or rebalances Herald sends each delivery once it is accepted, so any
        // repeat the receivers dropped needs an explanation.
        if accounting.duplicates > 0 {
            failures.push(format!(
                "{} deliveries arrived more than once",
                accounting.duplicates
            ));
        }
        if accounting.unknown_ids > 0 {
            failures.push(format!(
                "{} requests carried ids the harness did not publish",
                accounting.unknown_ids
            ));
        }
        if let (Some(minimum), Some(ratio)) = (self.scenario.min_ceiling_ratio, self.ceiling_ratio)
            && ratio < minimum
        {
            failures.push(format!(
                "throughput is {ratio:.2} of the ceiling, below the required {minimum:.2}"
            ));
        }
        if let Some(maximum) = self.scenario.max_p99_ms
            && self.latency.p99_ms > maximum
        {
            failures.push(format!(
                "p99 latency {:.1} ms is above the allowed {maximum:.1} ms",
                self.latency.p99_ms
            ));
        }
        failures
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Formats the report for people.
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let scenario = &self.scenario;
        let accounting = &self.accounting;
        let _ = writeln!(text, "# Load test: {}\n", scenario.name);
        let _ = writeln!(text, "{}\n", scenario.description);
        let _ = writeln!(
            text,
            "Run on {} at commit {}, {} cores.\n",
            self.date, self.commit, self.cores
        );
        let _ = writeln!(text, "| measure | value |\n| --- | --- |");
        let _ = writeln!(text, "| events published | {} |", accounting.published);
        let _ = writeln!(
            text,
            "| fan-out | {} ({} accepting) |",
            scenario.fanout,
            scenario.accepting_endpoints()
        );
        let _ = writeln!(
            text,
            "| deliveries expected / delivered | {} / {} |",
            accounting.expected, accounting.delivered
        );
        let _ = writeln!(
            text,
            "| duplicates dropped by receivers | {} |",
            accounting.duplicates
        );
        let _ = writeln!(
            text,
            "| invalid signatures | {} |",
            accounting.invalid_signatures
        );
        let _ = writeln!(
            text,
            "| requests refused by endpoints on purpose | {} |",
            accounting.refused_by_endpoints
        );
        let _ = writeln!(text, "| duration | {:.1} s |", self.duration_s);
        let _ = writeln!(
            text,
            "| Herald throughput | {:.0} deliveries/s |",
            self.throughput_per_s
        );
        if let Some(ceiling) = &self.ceiling {
            let _ = writeln!(
                text,
                "| ceiling (bare HTTP path) | {:.0} requests/s |",
                ceiling.throughput_per_s
            );
        }
        if let Some(ratio) = self.ceiling_ratio {
            let _ = writeln!(text, "| Herald / ceiling | {:.0}% |", ratio * 100.0);
        }
        let latency = &self.latency;
        let _ = writeln!(
            text,
            "| end-to-end latency p50 / p90 / p99 / p99.9 / max | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} ms |",
            latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.p999_ms, latency.max_ms
        );
        let _ = writeln!(
            text,
            "| router CPU / peak memory | {:.1} s / {:.0} MiB |",
            self.router.cpu_seconds, self.router.peak_memory_mb
        );
        let _ = writeln!(
            text,
            "| sender CPU / peak memory | {:.1} s / {:.0} MiB |",
            self.sender.cpu_seconds, self.sender.peak_memory_mb
        );
        let verdict = if self.passed() {
            "passed".to_owned()
        } else {
            format!("failed: {}", self.failures.join("; "))
        };
        let _ = writeln!(
            text,
            "\nResult: {verdict}\n\n![throughput and latency](chart.svg)"
        );
        text
    }

    /// Draws deliveries per second and p50/p99 latency per second as two stacked line charts.
    pub fn svg(&self) -> String {
        const WIDTH: f64 = 800.0;
        const PANEL: f64 = 200.0;
        const MARGIN: f64 = 50.0;
        let seconds = self.series.len().max(2) as f64 - 1.0;
        let x = |second: usize| MARGIN + (WIDTH - 2.0 * MARGIN) * second as f64 / seconds;
        let max_rate = self
            .series
            .iter()
            .map(|s| s.deliveries)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let max_latency = self
            .series
            .iter()
            .map(|s| s.p99_ms)
            .fold(0.0, f64::max)
            .max(1.0);
        // A second without deliveries has no latency: the latency lines break there instead of
        // dropping to zero.
        let lines =
            |top: f64, maximum: f64, value: &dyn Fn(&SecondSample) -> f64, break_on_empty: bool| {
                let mut segments: Vec<Vec<String>> = vec![Vec::new()];
                for sample in &self.series {
                    if break_on_empty && sample.deliveries == 0 {
                        segments.push(Vec::new());
                        continue;
                    }
                    let y = top + PANEL - PANEL * value(sample) / maximum;
                    if let Some(segment) = segments.last_mut() {
                        segment.push(format!("{:.1},{y:.1}", x(sample.second)));
                    }
                }
                segments
                    .into_iter()
                    .filter(|segment| !segment.is_empty())
                    .map(|segment| segment.join(" "))
                    .collect::<Vec<String>>()
            };
        let rate_top = MARGIN;
        let latency_top = 2.0 * MARGIN + PANEL;
        let height = 3.0 * MARGIN + 2.0 * PANEL;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (top, title) in [
            (
                rate_top,
                format!("deliveries per second (max {max_rate:.0})"),
            ),
            (
                latency_top,
                format!(
                    "end-to-end latency per second, ms: p50 blue, p99 red (max {max_latency:.1})"
                ),
            ),
        ] {
            let _ = writeln!(
                svg,
                r##"<rect x="{MARGIN}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#999"/>"##,
                WIDTH - 2.0 * MARGIN
            );
            let _ = writeln!(
                svg,
                r#"<text x="{MARGIN}" y="{}">{title}</text>"#,
                top - 8.0
            );
        }
        let plotted = [
            (
                "#2a7",
                lines(rate_top, max_rate, &|s| s.deliveries as f64, false),
            ),
            ("#36c", lines(latency_top, max_latency, &|s| s.p50_ms, true)),
            ("#c33", lines(latency_top, max_latency, &|s| s.p99_ms, true)),
        ];
        for (colour, segments) in plotted {
            for points in segments {
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>"#
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{MARGIN}" y="{}">seconds since the first event (0 to {seconds:.0})</text>"#,
            height - 15.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceiling::CeilingResult;
    use crate::scenario::Source;

    fn scenario() -> LoadScenario {
        LoadScenario {
            name: "unit".into(),
            description: "a unit test".into(),
            events: 10,
            rate_per_s: 0,
            source: Source::Synthetic,
            payload_bytes: 1024,
            payload_bytes_max: None,
            event_types: vec!["loadtest.synthetic".into()],
            fanout: 2,
            failing_endpoints: 0,
            hanging_endpoints: 0,
            rate_limited_endpoints: 0,
            gone_endpoints: 0,
            slow_body_endpoints: 0,
            endpoint_error_rate: 0.0,
            endpoint_latency_ms: 0,
            endpoint_latency_max_ms: None,
            ceiling: true,
            timeout_s: 10,
            min_ceiling_ratio: Some(0.6),
            max_p99_ms: Some(50.0),
            herald_environment: Default::default(),
        }
    }

    fn accounting(delivered: u64) -> Accounting {
        Accounting {
            published: 10,
            expected: 20,
            delivered,
            duplicates: 0,
            invalid_signatures: 0,
            refused_by_endpoints: 0,
            unknown_ids: 0,
            complete: delivered >= 20,
        }
    }

    fn ceiling(throughput_per_s: f64) -> CeilingResult {
        CeilingResult {
            requests: 20,
            failures: 0,
            duration_s: 1.0,
            throughput_per_s,
            latency: Percentiles::default(),
        }
    }

    fn recorder(latency_ms: u64) -> LatencyRecorder {
        let mut recorder = LatencyRecorder::default();
        for second in 0..2 {
            for _ in 0..10 {
                recorder.record(
                    Duration::from_secs(second),
                    Duration::from_millis(latency_ms),
                );
            }
        }
        recorder
    }

    #[test]
    fn ratio_is_herald_over_ceiling() {
        let report = Report::new(
            &scenario(),
            "abc",
            accounting(20),
            Duration::from_secs(2),
            &recorder(5),
            Some(ceiling(20.0)),
            Default::default(),
        );
        assert_eq!(report.throughput_per_s, 10.0);
        assert_eq!(report.ceiling_ratio, Some(0.5));
        assert_eq!(
            report.failures,
            ["throughput is 0.50 of the ceiling, below the required 0.60"]
        );
    }

    #[test]
    fn missing_deliveries_and_slow_p99_fail_the_run() {
        let report = Report::new(
            &scenario(),
            "abc",
            accounting(15),
            Duration::from_secs(1),
            &recorder(80),
            Some(ceiling(10.0)),
            Default::default(),
        );
        assert!(
            report.failures.iter().any(|f| f == "5 deliveries missing"),
            "{:?}",
            report.failures
        );
        assert!(
            report.failures.iter().any(|f| f.starts_with("p99 latency")),
            "{:?}",
            report.failures
        );
        assert!(!report.passed());
    }

    #[test]
    fn complete_run_passes_and_renders() {
        let report = Report::new(
            &scenario(),
            "abc",
            accounting(20),
            Duration::from_secs(1),
            &recorder(5),
            Some(ceiling(20.0)),
            Default::default(),
        );
        assert!(report.passed(), "{:?}", report.failures);
        assert!(report.markdown().contains("| Herald / ceiling | 100% |"));
        let svg = report.svg();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }

    #[test]
    fn latency_lines_break_at_empty_seconds() {
        let mut recorder = LatencyRecorder::default();
        recorder.record(Duration::from_secs(0), Duration::from_millis(5));
        recorder.record(Duration::from_secs(2), Duration::from_millis(9));
        let report = Report::new(
            &scenario(),
            "abc",
            accounting(20),
            Duration::from_secs(3),
            &recorder,
            None,
            Default::default(),
        );
        let svg = report.svg();
        // One throughput line, and p50 and p99 each in two pieces around the empty second.
        assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");
        assert!(serde_json::to_string(&report).is_ok());
    }
}
