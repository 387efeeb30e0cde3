//! The consume loop shared by the router and the sender. It reads records, starts the work for
//! each one, and stores a record's offset only once that record and every record before it in
//! its partition have finished: the work's future resolves only when its outcome is safe in Kafka.
//!
//! Flow control: when a partition has `max_in_flight_per_partition` unfinished records, or the
//! stage has `max_in_flight` records or `max_in_flight_bytes` of payload, the loop stops taking
//! records. If that lasts [`PAUSE_AFTER`], the full partitions (or all of them) are paused and the
//! loop polls again, so heartbeats and rebalances are served. A short stall is waited out without
//! a pause, because a resumed partition is fetched again only after a delay. Memory does not grow
//! with the backlog in Kafka. A paused partition resumes once its work is down to three quarters
//! of its limit.
//!
//! Revocation: before partitions are taken away, the stage gives their unfinished work up to
//! `shutdown_timeout` to finish, stores how far each partition is finished and commits, so the
//! next owner sends again only what had no outcome. A lost assignment commits nothing.
//!
//! A failed piece of work stops the stage without storing its offset: the process exits and the
//! records are read again after a restart.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry::KeyValue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::Notify;

use crate::kafka::{GenerationContext, RevokeHandler};
use crate::offsets::{OffsetTracker, TopicPartition};

/// How often paused partitions are checked even when no work finishes.
const RELIEVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a full window may stop the loop from polling before every partition is paused.
pub const PAUSE_AFTER: Duration = Duration::from_millis(200);

/// Limits of one stage.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// The stage's name in logs: `router` or `sender`.
    pub name: &'static str,
    /// Records whose work may be unfinished at once, across all partitions.
    pub max_in_flight: usize,
    /// Records whose work may be unfinished at once in one partition.
    pub max_in_flight_per_partition: usize,
    /// Payload bytes of the unfinished records, across all partitions.
    pub max_in_flight_bytes: usize,
    /// Time allowed for unfinished work on shutdown and when partitions are revoked.
    pub shutdown_timeout: Duration,
}

/// The error that stopped a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError<E: std::error::Error + 'static> {
    #[error("work on {topic}/{partition}/{offset} failed")]
    Work {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: E,
    },
}

/// The unfinished work of a stage, shared by the loop, the tasks doing the work, and the
/// rebalance callback.
struct Window<E: std::error::Error + 'static> {
    name: &'static str,
    state: Mutex<WindowState<E>>,
    /// Signalled on every finished record, for the rebalance callback.
    changed: Condvar,
    /// Signalled on every finished record, for the loop.
    wake: Notify,
    drain_timeout: Duration,
}

struct WindowState<E: std::error::Error + 'static> {
    tracker: OffsetTracker,
    /// Per partition, the offset through which every record is finished and not yet stored.
    to_store: HashMap<TopicPartition, i64>,
    failure: Option<StageError<E>>,
    /// Set when the loop has ended: a later revocation (the consumer closing) waits for nothing.
    closed: bool,
}

impl<E: std::error::Error + 'static> Window<E> {
    fn new(settings: &StageSettings) -> Self {
        Self {
            name: settings.name,
            state: Mutex::new(WindowState {
                tracker: OffsetTracker::default(),
                to_store: HashMap::new(),
                failure: None,
                closed: false,
            }),
            changed: Condvar::new(),
            wake: Notify::new(),
            drain_timeout: settings.shutdown_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, WindowState<E>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finish(
        &self,
        partition: TopicPartition,
        offset: i64,
        generation: u64,
        result: Result<(), E>,
    ) {
        let mut state = self.lock();
        match result {
            Ok(()) => {
                if let Some(through) = state.tracker.finish(&partition, offset, generation) {
                    state.to_store.insert(partition, through);
                }
            }
            Err(source) => {
                if state.failure.is_none() {
                    let (topic, partition) = partition;
                    state.failure = Some(StageError::Work {
                        topic,
                        partition,
                        offset,
                        source,
                    });
                }
            }
        }
        drop(state);
        self.changed.notify_all();
        self.wake.notify_one();
    }

    /// Stores the offsets that moved forward; returns the failure that stops the stage, if any.
    fn store_ready(
        &self,
        consumer: &StreamConsumer<GenerationContext>,
    ) -> Result<(), StageError<E>> {
        let mut state = self.lock();
        if let Some(failure) = state.failure.take() {
            return Err(failure);
        }
        for ((topic, partition), through) in state.to_store.drain() {
            store(consumer, &topic, partition, through);
        }
        Ok(())
    }
}

impl<E: std::error::Error + Send + 'static> RevokeHandler for Window<E> {
    fn revoked(
        &self,
        consumer: &BaseConsumer<GenerationContext>,
        revoked: &[TopicPartition],
        lost: bool,
    ) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if !lost {
            state = self.wait_for(state, revoked);
            for partition in revoked {
                if let Some(through) = state.to_store.remove(partition) {
                    store(consumer, &partition.0, partition.1, through);
                }
            }
        }
        let unfinished: usize = revoked
            .iter()
            .map(|partition| state.tracker.in_flight_in(partition))
            .sum();
        for partition in revoked {
            state.to_store.remove(partition);
            state.tracker.forget(partition);
        }
        drop(state);
        if unfinished > 0 {
            tracing::warn!(
                stage = self.name,
                unfinished,
                lost,
                "partitions revoked with work unfinished: the next owner sends it again"
            );
        }
        if !lost {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    tracing::warn!(stage = self.name, %error, "commit on revocation failed: the next owner sends again what followed the last commit")
                }
            }
        }
    }
}

impl<E: std::error::Error + 'static> Window<E> {
    /// Waits until the revoked partitions have no unfinished work, or the drain timeout passes.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, WindowState<E>>,
        revoked: &[TopicPartition],
    ) -> MutexGuard<'a, WindowState<E>> {
        let unfinished = |state: &WindowState<E>| {
            revoked
                .iter()
                .any(|partition| state.tracker.in_flight_in(partition) > 0)
        };
        if !unfinished(&state) {
            return state;
        }
        // The callback runs inside the loop's poll on a runtime worker. Waiting there is allowed
        // only on the multi-threaded runtime, which moves the worker's other tasks elsewhere.
        let multi_threaded = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if !multi_threaded {
            return state;
        }
        let deadline = std::time::Instant::now() + self.drain_timeout;
        tokio::task::block_in_place(|| {
            while unfinished(&state) {
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                state = self
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            state
        })
    }
}

/// The reason the loop stopped taking records, and since when.
struct Stall {
    since: tokio::time::Instant,
    /// Partitions at their own limit.
    partitions: HashSet<TopicPartition>,
    /// The whole stage at its limit.
    all: bool,
}

impl Stall {
    fn new() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            partitions: HashSet::new(),
            all: false,
        }
    }

    /// Forgets what has room again; true while anything is still full.
    fn still_full<E: std::error::Error + 'static>(
        &mut self,
        window: &Window<E>,
        settings: &StageSettings,
    ) -> bool {
        let state = window.lock();
        let tracker = &state.tracker;
        self.partitions.retain(|partition| {
            tracker.in_flight_in(partition) >= settings.max_in_flight_per_partition
        });
        self.all = tracker.in_flight() >= settings.max_in_flight
            || tracker.bytes() >= settings.max_in_flight_bytes;
        self.all || !self.partitions.is_empty()
    }
}

/// The partitions the loop has paused.
#[derive(Default)]
struct Flow {
    /// Paused because their own window is full.
    partitions: HashSet<TopicPartition>,
    /// Everything paused because the stage's window is full.
    all: bool,
    /// How many partitions are paused now, for the `herald.partitions.paused` gauge.
    paused: Arc<std::sync::atomic::AtomicU64>,
}

impl Flow {
    fn pause_partition(
        &mut self,
        consumer: &StreamConsumer<GenerationContext>,
        partition: &TopicPartition,
    ) {
        if self.partitions.insert(partition.clone()) && !self.all {
            apply(consumer, std::slice::from_ref(partition), true);
        }
        self.count_paused(consumer);
    }

    /// Updates the number of paused partitions that the gauge reports.
    fn count_paused(&self, consumer: &StreamConsumer<GenerationContext>) {
        let paused = if self.all {
            assigned(consumer).len()
        } else {
            self.partitions.len()
        };
        self.paused
            .store(paused as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn pause_all(&mut self, consumer: &StreamConsumer<GenerationContext>, name: &'static str) {
        if self.all {
            return;
        }
        self.all = true;
        tracing::debug!(
            stage = name,
            "in-flight window full: every partition paused"
        );
        apply(consumer, &assigned(consumer), true);
        self.count_paused(consumer);
    }

    /// Resumes what dropped to three quarters of its limit.
    fn relieve<E: std::error::Error + 'static>(
        &mut self,
        consumer: &StreamConsumer<GenerationContext>,
        window: &Window<E>,
        settings: &StageSettings,
    ) {
        let state = window.lock();
        let tracker = &state.tracker;
        let low = |limit: usize| limit - limit / 4;
        let relieved: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|partition| {
                tracker.in_flight_in(partition) <= low(settings.max_in_flight_per_partition)
            })
            .cloned()
            .collect();
        for partition in &relieved {
            self.partitions.remove(partition);
        }
        let all_relieved = self.all
            && tracker.in_flight() <= low(settings.max_in_flight)
            && tracker.bytes() <= low(settings.max_in_flight_bytes);
        drop(state);

        if all_relieved {
            self.all = false;
            let resumed: Vec<TopicPartition> = assigned(consumer)
                .into_iter()
                .filter(|partition| !self.partitions.contains(partition))
                .collect();
            apply(consumer, &resumed, false);
        } else if !self.all && !relieved.is_empty() {
            apply(consumer, &relieved, false);
        }
        self.count_paused(consumer);
    }
}

fn assigned(consumer: &StreamConsumer<GenerationContext>) -> Vec<TopicPartition> {
    consumer.assignment().map_or_else(
        |_| Vec::new(),
        |list| {
            list.elements()
                .iter()
                .map(|element| (element.topic().to_owned(), element.partition()))
                .collect()
        },
    )
}

/// Pauses or resumes partitions. A partition revoked in the meantime is simply skipped.
fn apply(consumer: &StreamConsumer<GenerationContext>, partitions: &[TopicPartition], pause: bool) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::debug!(pause, %error, "pause or resume skipped");
    }
}

/// Runs the loop until `shutdown` resolves or a piece of work fails. `start` is called in offset
/// order for each record and returns the rest of the work as a future, which runs concurrently.
pub async fn run_stage<F, W, E>(
    consumer: &StreamConsumer<GenerationContext>,
    settings: &StageSettings,
    shutdown: impl Future<Output = ()>,
    mut start: F,
) -> Result<(), StageError<E>>
where
    F: FnMut(&BorrowedMessage<'_>) -> W,
    W: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let context = consumer.context().clone();
    let window = Arc::new(Window::<E>::new(settings));
    context.on_revoke(Arc::clone(&window) as Arc<dyn RevokeHandler>);
    let observed = Arc::clone(&window);
    // The callback stays registered with the meter provider once the gauge is built.
    let _ = opentelemetry::global::meter(crate::telemetry::METER)
        .u64_observable_gauge("herald.in_flight")
        .with_unit("{record}")
        .with_description("Records taken from Kafka and not yet finished, by stage")
        .with_callback(move |observer| {
            let in_flight = observed.lock().tracker.in_flight() as u64;
            observer.observe(in_flight, &[KeyValue::new("stage", observed.name)]);
        })
        .build();
    let mut flow = Flow::default();
    let paused = Arc::clone(&flow.paused);
    let stage_name = settings.name;
    let _ = opentelemetry::global::meter(crate::telemetry::METER)
        .u64_observable_gauge("herald.partitions.paused")
        .with_unit("{partition}")
        .with_description("Partitions paused because their work reached the in-flight limits")
        .with_callback(move |observer| {
            observer.observe(
                paused.load(std::sync::atomic::Ordering::Relaxed),
                &[KeyValue::new("stage", stage_name)],
            );
        })
        .build();
    // Set while the loop has stopped taking records because a window is full.
    let mut stall: Option<Stall> = None;
    let mut relieve_tick = tokio::time::interval(RELIEVE_INTERVAL);
    relieve_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    let result = loop {
        let stalled_at = stall.as_ref().map(|stall| stall.since + PAUSE_AFTER);
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            () = window.wake.notified() => {
                if let Err(failure) = window.store_ready(consumer) {
                    break Err(failure);
                }
                flow.relieve(consumer, &window, settings);
                if let Some(current) = stall.as_mut() && !current.still_full(&window, settings) {
                    stall = None;
                }
            }
            _ = relieve_tick.tick() => flow.relieve(consumer, &window, settings),
            () = sleep_until(stalled_at), if stalled_at.is_some() => {
                if let Some(stalled) = stall.take() {
                    if stalled.all {
                        flow.pause_all(consumer, settings.name);
                    }
                    for partition in &stalled.partitions {
                        flow.pause_partition(consumer, partition);
                    }
                }
            }
            received = consumer.recv(), if stall.is_none() => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        if let Some(repeats) = crate::kafka::error_log().due(&format!("{}: {error}", settings.name)) {
                            tracing::warn!(stage = settings.name, %error, repeats, "consumer error, continuing (logged at most every 30 s)");
                        }
                        continue;
                    }
                };
                let partition = (message.topic().to_owned(), message.partition());
                let offset = message.offset();
                let generation = context.generation(message.topic(), message.partition());
                let bytes = message.payload_len();
                let (partition_full, all_full) = {
                    let mut state = window.lock();
                    state.tracker.begin(&partition, offset, generation, bytes);
                    (
                        state.tracker.in_flight_in(&partition) >= settings.max_in_flight_per_partition,
                        state.tracker.in_flight() >= settings.max_in_flight
                            || state.tracker.bytes() >= settings.max_in_flight_bytes,
                    )
                };

                let work = start(&message);
                drop(message);
                if all_full || partition_full {
                    let stalled = stall.get_or_insert_with(Stall::new);
                    stalled.all |= all_full;
                    if partition_full {
                        stalled.partitions.insert(partition.clone());
                    }
                }
                let window = Arc::clone(&window);
                tokio::spawn(async move {
                    let result = work.await;
                    window.finish(partition, offset, generation, result);
                });
            }
        }
    };
    if let Err(failure) = result {
        window.lock().closed = true;
        return Err(failure);
    }

    let in_flight = window.lock().tracker.in_flight();
    tracing::info!(
        stage = settings.name,
        in_flight,
        "stopping: finishing work in flight"
    );
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    loop {
        let notified = window.wake.notified();
        if let Err(failure) = window.store_ready(consumer) {
            window.lock().closed = true;
            return Err(failure);
        }
        if window.lock().tracker.in_flight() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let unfinished = {
        let mut state = window.lock();
        state.closed = true;
        state.tracker.in_flight()
    };
    if unfinished > 0 {
        tracing::warn!(
            stage = settings.name,
            unfinished,
            "work still unfinished at the shutdown deadline: the next owner sends it again"
        );
    }
    commit(consumer, settings.name);
    Ok(())
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stores `through` as finished; auto-commit then sends `through + 1` as the next offset to read.
fn store<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    through: i64,
) {
    if let Err(error) = consumer.store_offset(topic, partition, through) {
        // The partition was revoked in the meantime: its new owner reads from the last commit.
        tracing::debug!(%topic, partition, offset = through, %error, "offset not stored");
    }
}

/// Marks `offset` finished and stores the offset up to which its partition is finished, if that
/// moved forward. For loops that keep their own tracker, such as the delay forwarder.
pub fn store_finished(
    consumer: &StreamConsumer<GenerationContext>,
    tracker: &mut OffsetTracker,
    partition: &TopicPartition,
    offset: i64,
    generation: u64,
) {
    if let Some(through) = tracker.finish(partition, offset, generation) {
        store(consumer, &partition.0, partition.1, through);
    }
}

/// Commits the stored offsets synchronously, as the last step of a loop's shutdown.
pub fn commit(consumer: &StreamConsumer<GenerationContext>, stage: &'static str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(stage, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(error) => {
            tracing::warn!(stage, %error, "final commit failed: records since the last commit are sent again")
        }
    }
}
