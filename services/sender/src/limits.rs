//! Per-subscription limits: a rate limit, a limit on requests open at once, and a circuit that
//! opens after repeated failures. One sender owns each subscription at a time (deliveries are
//! keyed by subscription id), so these in-process limits are the subscription's global ones.
//!
//! A delivery requests a pass from its subscription's gate before its attempt. It waits while the
//! subscription is at its limits, but never long. When the wait would pass `park_after`, the
//! delivery is parked on the first retry tier instead, which frees its place in the in-flight
//! window for deliveries to other subscriptions. The wait is estimated from the line ahead and
//! the recent attempt time. It counts as too long at once when every slot is taken and no attempt
//! has finished for `park_after` (an endpoint that does not respond). A delivery that waited
//! `park_after` after all is parked too, as is one that finds `max_waiting` others waiting.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use herald_core::config::SenderConfig;
use herald_core::subscription::Subscription;

/// The shortest time between two log lines about one subscription's parked deliveries.
const PARK_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one subscription once defaults are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    rate_per_second: Option<NonZeroU32>,
    burst: NonZeroU32,
    max_concurrency: u32,
}

/// The sender's limits for every subscription it has seen.
pub(crate) struct Limits {
    defaults: SenderConfig,
    park_after: Duration,
    circuit_open: Duration,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

/// The gate's decision for one delivery.
pub(crate) enum Admission {
    /// Make the attempt. The pass keeps a concurrency slot until it is dropped.
    Go(Pass),
    /// Waiting would take too long: park the delivery without an attempt.
    Park,
    /// The circuit is open: the delivery fails at once and goes to the next tier.
    CircuitOpen,
}

/// The endpoint's health as one attempt shows it, for the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// A 2xx: the endpoint works.
    Healthy,
    /// A timeout, a connection or request error, a 5xx, or another status that is not 2xx.
    Failing,
    /// 429 Too Many Requests: the endpoint works and requests fewer attempts. It neither opens nor closes
    /// the circuit.
    Throttled,
}

/// A circuit's change, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitChange {
    Opened,
    Reopened,
    Closed,
}

impl Limits {
    pub(crate) fn new(config: &SenderConfig) -> Self {
        Self {
            defaults: config.clone(),
            park_after: Duration::from_millis(config.park_after_ms),
            circuit_open: Duration::from_millis(config.circuit_open_ms),
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn settings(&self, subscription: &Subscription) -> Settings {
        let rate = subscription
            .rate_limit_per_second
            .unwrap_or(self.defaults.default_rate_limit_per_second);
        let burst = subscription
            .rate_limit_burst
            .unwrap_or(self.defaults.default_rate_limit_burst);
        Settings {
            rate_per_second: NonZeroU32::new(rate),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            max_concurrency: subscription
                .max_concurrency
                .unwrap_or(self.defaults.default_max_concurrency)
                .max(1),
        }
    }

    /// Returns the gate of `subscription`, built again when its limits changed.
    fn gate(&self, subscription: &Subscription) -> Arc<Gate> {
        let settings = self.settings(subscription);
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match gates.get(&subscription.id) {
            Some(gate) if gate.settings == settings => Arc::clone(gate),
            _ => {
                let gate = Arc::new(Gate::new(
                    settings,
                    self.max_waiting(settings),
                    self.defaults.circuit_failure_threshold,
                ));
                gates.insert(subscription.id.clone(), Arc::clone(&gate));
                gate
            }
        }
    }

    /// Returns how many may wait: the configured bound, and no more than the rate limit lets
    /// through within `park_after`, since the ones behind them would be parked anyway.
    fn max_waiting(&self, settings: Settings) -> usize {
        let configured = self.defaults.max_waiting_per_subscription;
        match settings.rate_per_second {
            Some(rate) => {
                let passes = f64::from(rate.get()) * self.park_after.as_secs_f64()
                    + f64::from(settings.burst.get());
                configured.min(passes.ceil() as usize).max(1)
            }
            None => configured,
        }
    }

    /// Waits for a pass for `subscription`, within the limits described above. With
    /// `last_chance` (the delivery has no retry tier left) an open circuit does not block, so a
    /// delivery is never dead-lettered without a real final attempt.
    pub(crate) async fn admit(&self, subscription: &Subscription, last_chance: bool) -> Admission {
        let gate = self.gate(subscription);
        if !last_chance && gate.circuit().blocks(Instant::now()) {
            return Admission::CircuitOpen;
        }
        if gate.wait_too_long(self.park_after) {
            return gate.park(&subscription.id);
        }
        let Some(waiting) = WaitingGuard::enter(&gate) else {
            return gate.park(&subscription.id);
        };
        let acquire = async {
            let permit = Arc::clone(&gate.concurrency).acquire_owned().await.ok()?;
            if let Some(rate) = &gate.rate {
                // One waiter at a time checks the limiter, in arrival order.
                let _turn = gate.rate_turn.lock().await;
                while let Err(not_until) = rate.check() {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    tokio::time::sleep(wait).await;
                }
            }
            Some(permit)
        };
        let permit = match tokio::time::timeout(self.park_after, acquire).await {
            Ok(Some(permit)) => permit,
            Ok(None) | Err(_) => return gate.park(&subscription.id),
        };
        drop(waiting);
        // The circuit may have opened while this delivery waited.
        let probe = match gate.circuit().admit(Instant::now()) {
            CircuitState::Closed => false,
            CircuitState::Probe => true,
            CircuitState::Open if last_chance => false,
            CircuitState::Open => return Admission::CircuitOpen,
        };
        Admission::Go(Pass {
            gate: Arc::clone(&gate),
            _permit: permit,
            probe,
            finished: false,
            started: Instant::now(),
            circuit_open: self.circuit_open,
        })
    }
}

/// Permission for one attempt.
pub(crate) struct Pass {
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
    probe: bool,
    finished: bool,
    started: Instant,
    circuit_open: Duration,
}

impl Pass {
    /// Records the attempt's result in the circuit and frees the concurrency slot.
    pub(crate) fn finish(mut self, health: Health) -> Option<CircuitChange> {
        self.finished = true;
        self.gate.attempt_took(self.started.elapsed());
        let mut circuit = self.gate.circuit();
        match health {
            Health::Healthy => circuit.record(true, self.probe, self.circuit_open, Instant::now()),
            Health::Failing => circuit.record(false, self.probe, self.circuit_open, Instant::now()),
            Health::Throttled => {
                circuit.probe_not_made(self.probe);
                None
            }
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if !self.finished {
            self.gate.attempt_took(self.started.elapsed());
            self.gate.circuit().probe_not_made(self.probe);
        }
    }
}

struct Gate {
    settings: Settings,
    concurrency: Arc<Semaphore>,
    rate: Option<DefaultDirectRateLimiter>,
    rate_turn: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
    max_waiting: usize,
    circuit: Mutex<Circuit>,
    created: Instant,
    /// Deliveries parked since the last log line about them, and when that line was written.
    parked: Mutex<(u64, Option<Instant>)>,
    /// When an attempt last finished, in microseconds since `created`.
    last_finished_micros: AtomicU64,
    /// Recent attempt time, in microseconds: an average that weighs the latest attempt 1/8.
    average_micros: AtomicU64,
}

impl Gate {
    fn new(settings: Settings, max_waiting: usize, failure_threshold: u32) -> Self {
        Self {
            settings,
            concurrency: Arc::new(Semaphore::new(settings.max_concurrency as usize)),
            rate: settings.rate_per_second.map(|rate| {
                RateLimiter::direct(Quota::per_second(rate).allow_burst(settings.burst))
            }),
            rate_turn: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            max_waiting,
            circuit: Mutex::new(Circuit::new(failure_threshold)),
            created: Instant::now(),
            parked: Mutex::new((0, None)),
            last_finished_micros: AtomicU64::new(0),
            average_micros: AtomicU64::new(0),
        }
    }

    /// Counts a parked delivery and logs the count at most every [`PARK_LOG_INTERVAL`], so an
    /// operator sees a subscription at its limits without a line per delivery.
    fn park(&self, subscription_id: &str) -> Admission {
        let mut parked = self
            .parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        parked.0 += 1;
        let now = Instant::now();
        if parked
            .1
            .is_none_or(|logged| now.duration_since(logged) >= PARK_LOG_INTERVAL)
        {
            tracing::info!(
                subscription_id,
                parked = parked.0,
                "deliveries parked on the first retry tier: the subscription is at its rate or concurrency limit, or its endpoint is slow"
            );
            *parked = (0, Some(now));
        }
        Admission::Park
    }

    fn attempt_took(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .average_micros
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |average| {
                Some(if average == 0 {
                    micros
                } else {
                    average - average / 8 + micros / 8
                })
            });
        let since_created = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_finished_micros
            .fetch_max(since_created, Ordering::AcqRel);
    }

    /// True when every slot is taken and a new delivery would wait longer than `park_after`: no
    /// attempt finished for that long, or the line ahead would take that long at the recent
    /// attempt time. Before any attempt has finished, the line may be one round of slots long.
    fn wait_too_long(&self, park_after: Duration) -> bool {
        if self.concurrency.available_permits() > 0 {
            return false;
        }
        let park_after_micros = u64::try_from(park_after.as_micros()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        let idle = now.saturating_sub(self.last_finished_micros.load(Ordering::Acquire));
        if idle > park_after_micros {
            return true;
        }
        let ahead = self.waiting.load(Ordering::Acquire) as u64 + 1;
        let average = self.average_micros.load(Ordering::Acquire);
        if average == 0 {
            // No attempt has finished yet: a line longer than one round of slots is too long.
            return ahead > u64::from(self.settings.max_concurrency);
        }
        let estimate = ahead.saturating_mul(average) / u64::from(self.settings.max_concurrency);
        estimate > park_after_micros
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts a delivery among those waiting at a gate while it lives.
struct WaitingGuard<'a>(&'a Gate);

impl<'a> WaitingGuard<'a> {
    fn enter(gate: &'a Gate) -> Option<Self> {
        let before = gate.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= gate.max_waiting {
            gate.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(gate))
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CircuitState {
    Closed,
    /// Open, and its wait is over: this delivery is the one probe.
    Probe,
    Open,
}

/// A subscription's circuit: closed while attempts succeed, open for a while after
/// `failure_threshold` failures in a row, then one probe attempt decides whether it closes.
#[derive(Debug)]
struct Circuit {
    failure_threshold: u32,
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Circuit {
    fn new(failure_threshold: u32) -> Self {
        Self {
            failure_threshold,
            failures_in_a_row: 0,
            open_until: None,
            probing: false,
        }
    }

    /// True while the circuit is open and not ready for a probe.
    fn blocks(&self, now: Instant) -> bool {
        self.open_until
            .is_some_and(|until| now < until || self.probing)
    }

    fn admit(&mut self, now: Instant) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(until) if now < until || self.probing => CircuitState::Open,
            Some(_) => {
                self.probing = true;
                CircuitState::Probe
            }
        }
    }

    /// Releases the probe when it was not attempted, so the next delivery can probe.
    fn probe_not_made(&mut self, probe: bool) {
        if probe {
            self.probing = false;
        }
    }

    fn record(
        &mut self,
        succeeded: bool,
        probe: bool,
        open_for: Duration,
        now: Instant,
    ) -> Option<CircuitChange> {
        if probe {
            self.probing = false;
        }
        if succeeded {
            self.failures_in_a_row = 0;
            return self.open_until.take().map(|_| CircuitChange::Closed);
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if probe {
            self.open_until = Some(now + open_for);
            return Some(CircuitChange::Reopened);
        }
        if self.open_until.is_none() && self.failures_in_a_row >= self.failure_threshold {
            self.open_until = Some(now + open_for);
            return Some(CircuitChange::Opened);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    #[test]
    fn circuit_opens_and_probe_closes_it() {
        let start = Instant::now();
        let mut circuit = Circuit::new(3);
        assert_eq!(circuit.record(false, false, OPEN_FOR, start), None);
        assert_eq!(circuit.record(true, false, OPEN_FOR, start), None);
        assert_eq!(circuit.record(false, false, OPEN_FOR, start), None);
        assert_eq!(circuit.record(false, false, OPEN_FOR, start), None);
        assert_eq!(
            circuit.record(false, false, OPEN_FOR, start),
            Some(CircuitChange::Opened)
        );
        assert_eq!(circuit.admit(start), CircuitState::Open);
        assert!(circuit.blocks(start));

        let later = start + OPEN_FOR;
        assert!(!circuit.blocks(later));
        assert_eq!(circuit.admit(later), CircuitState::Probe);
        assert_eq!(
            circuit.admit(later),
            CircuitState::Open,
            "one probe at a time"
        );
        assert_eq!(
            circuit.record(true, true, OPEN_FOR, later),
            Some(CircuitChange::Closed)
        );
        assert_eq!(circuit.admit(later), CircuitState::Closed);
    }

    #[test]
    fn circuit_failed_probe_reopens() {
        let start = Instant::now();
        let mut circuit = Circuit::new(1);
        assert_eq!(
            circuit.record(false, false, OPEN_FOR, start),
            Some(CircuitChange::Opened)
        );
        let later = start + OPEN_FOR;
        assert_eq!(circuit.admit(later), CircuitState::Probe);
        circuit.probe_not_made(true);
        assert_eq!(circuit.admit(later), CircuitState::Probe);
        assert_eq!(
            circuit.record(false, true, OPEN_FOR, later),
            Some(CircuitChange::Reopened)
        );
        assert_eq!(circuit.admit(later), CircuitState::Open);
        assert_eq!(circuit.admit(later + OPEN_FOR), CircuitState::Probe);
    }

    fn subscription(rate: Option<u32>, concurrency: Option<u32>) -> Subscription {
        let spec = herald_core::subscription::SubscriptionSpec {
            rate_limit_per_second: rate,
            rate_limit_burst: Some(1),
            max_concurrency: concurrency,
            ..herald_core::subscription::SubscriptionSpec::new(
                "sub",
                "https://example.com/hook",
                &["*"],
                vec!["whsec_MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=".into()],
            )
        };
        let mut problems = herald_core::config::Problems::default();
        herald_core::subscription::check_spec(&spec, "s", false, &mut problems)
            .expect("valid subscription")
    }

    fn limits(park_after_ms: u64, max_waiting: usize) -> Limits {
        Limits::new(&SenderConfig {
            park_after_ms,
            max_waiting_per_subscription: max_waiting,
            ..SenderConfig::default()
        })
    }

    #[tokio::test]
    async fn concurrency_limit_parks_what_would_wait_too_long() {
        let limits = limits(50, 10);
        let subscription = subscription(None, Some(1));
        let Admission::Go(pass) = limits.admit(&subscription, false).await else {
            panic!("the first delivery gets a pass");
        };
        // The only slot is taken and stays taken past park_after.
        assert!(matches!(
            limits.admit(&subscription, false).await,
            Admission::Park
        ));
        assert_eq!(pass.finish(Health::Healthy), None);
        assert!(matches!(
            limits.admit(&subscription, false).await,
            Admission::Go(_)
        ));
    }

    #[tokio::test]
    async fn gate_full_line_parks_at_once() {
        let limits = Arc::new(limits(60_000, 1));
        let subscription = Arc::new(subscription(None, Some(1)));
        let Admission::Go(_pass) = limits.admit(&subscription, false).await else {
            panic!("the first delivery gets a pass");
        };
        let waiting = {
            let (limits, subscription) = (Arc::clone(&limits), Arc::clone(&subscription));
            tokio::spawn(async move { limits.admit(&subscription, false).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while limits.gate(&subscription).waiting.load(Ordering::Acquire) == 0 {
            assert!(
                Instant::now() < deadline,
                "the second delivery never waited"
            );
            tokio::task::yield_now().await;
        }
        // The line is full with one, so the third is parked without waiting a minute.
        assert!(matches!(
            limits.admit(&subscription, false).await,
            Admission::Park
        ));
        waiting.abort();
    }

    #[tokio::test]
    async fn rate_limit_waits_then_parks() {
        // 5 per second with a burst of 1: the second pass comes after 200 ms.
        let limits = limits(1_000, 100);
        let subscription = subscription(Some(5), None);
        assert_eq!(limits.max_waiting(limits.settings(&subscription)), 6);
        let started = Instant::now();
        for _ in 0..2 {
            assert!(matches!(
                limits.admit(&subscription, false).await,
                Admission::Go(_)
            ));
        }
        assert!(started.elapsed() >= Duration::from_millis(150));

        let strict = self::limits(50, 100);
        assert!(matches!(
            strict.admit(&subscription, false).await,
            Admission::Go(_)
        ));
        assert!(matches!(
            strict.admit(&subscription, false).await,
            Admission::Park
        ));
    }

    #[test]
    fn gate_estimates_wait_and_stall() {
        let limits = limits(1_000, 100);
        let gate = limits.gate(&subscription(None, Some(2)));
        let _slots = Arc::clone(&gate.concurrency)
            .try_acquire_many_owned(2)
            .expect("two free slots");
        // No attempt finished yet: two may wait, the third is parked.
        gate.waiting.store(1, Ordering::Release);
        assert!(!gate.wait_too_long(Duration::from_millis(1_000)));
        gate.waiting.store(2, Ordering::Release);
        assert!(gate.wait_too_long(Duration::from_millis(1_000)));
        gate.waiting.store(0, Ordering::Release);
        // Attempts take 400 ms on two slots: the next in line waits about 200 ms, the sixth
        // about 1,200 ms.
        gate.attempt_took(Duration::from_millis(400));
        assert!(!gate.wait_too_long(Duration::from_millis(1_000)));
        gate.waiting.store(5, Ordering::Release);
        assert!(gate.wait_too_long(Duration::from_millis(1_000)));
        gate.waiting.store(0, Ordering::Release);
        // Nothing finished within the last microsecond: stalled for any shorter park_after.
        assert!(gate.wait_too_long(Duration::ZERO));
    }

    #[tokio::test]
    async fn changed_limits_build_a_new_gate() {
        let limits = limits(50, 10);
        let first = limits.gate(&subscription(None, Some(1)));
        let same = limits.gate(&subscription(None, Some(1)));
        let changed = limits.gate(&subscription(None, Some(2)));
        assert!(Arc::ptr_eq(&first, &same));
        assert!(!Arc::ptr_eq(&first, &changed));
    }
}
