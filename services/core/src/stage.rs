//! The consume loop shared by the router and the sender. It reads records, starts the work for
//! each one, and stores a record's offset only once that record and every record before it in
//! its partition have finished: the work's future resolves only when its outcome is safe in Kafka.
//!
//! The loop stops taking records while `max_in_flight` are unfinished, so memory does not grow
//! with the backlog. A failed piece of work stops the stage without storing its offset: the
//! process exits and the records are read again after a restart.

use std::future::Future;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use crate::kafka::GenerationContext;
use crate::offsets::{OffsetTracker, TopicPartition};

/// Limits of one stage.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// The stage's name in logs: `router` or `sender`.
    pub name: &'static str,
    /// Records whose work may be unfinished at once.
    pub max_in_flight: usize,
    /// Time allowed on shutdown for unfinished work before the final commit.
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

struct Finished<E> {
    partition: TopicPartition,
    offset: i64,
    generation: u64,
    result: Result<(), E>,
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
    let (finished_sender, mut finished_receiver) = mpsc::unbounded_channel::<Finished<E>>();
    let mut tracker = OffsetTracker::default();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(finished) = finished_receiver.recv() => record_finished(consumer, &mut tracker, finished)?,
            received = consumer.recv(), if tracker.in_flight() < settings.max_in_flight => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(stage = settings.name, %error, "consumer error, continuing");
                        continue;
                    }
                };
                let partition = (message.topic().to_owned(), message.partition());
                let offset = message.offset();
                let generation = context.generation(message.topic(), message.partition());
                tracker.begin(&partition, offset, generation);

                let work = start(&message);
                let finished_sender = finished_sender.clone();
                tokio::spawn(async move {
                    let result = work.await;
                    // The receiver is gone only when the stage stopped, and then nothing is stored.
                    let _ = finished_sender.send(Finished { partition, offset, generation, result });
                });
            }
        }
    }

    tracing::info!(
        stage = settings.name,
        in_flight = tracker.in_flight(),
        "stopping: finishing work in flight"
    );
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    while tracker.in_flight() > 0 {
        match tokio::time::timeout_at(deadline, finished_receiver.recv()).await {
            Ok(Some(finished)) => record_finished(consumer, &mut tracker, finished)?,
            Ok(None) | Err(_) => break,
        }
    }
    if tracker.in_flight() > 0 {
        tracing::warn!(
            stage = settings.name,
            in_flight = tracker.in_flight(),
            "work still unfinished at the shutdown deadline: the next owner sends it again"
        );
    }
    commit(consumer, settings.name);
    Ok(())
}

fn record_finished<E: std::error::Error + 'static>(
    consumer: &StreamConsumer<GenerationContext>,
    tracker: &mut OffsetTracker,
    finished: Finished<E>,
) -> Result<(), StageError<E>> {
    let Finished {
        partition: (topic, partition),
        offset,
        generation,
        result,
    } = finished;
    if let Err(source) = result {
        return Err(StageError::Work {
            topic,
            partition,
            offset,
            source,
        });
    }
    store_finished(consumer, tracker, &(topic, partition), offset, generation);
    Ok(())
}

/// Marks `offset` finished and stores the offset up to which its partition is finished, if that
/// moved forward. Shared by every loop that stores offsets in order.
pub fn store_finished(
    consumer: &StreamConsumer<GenerationContext>,
    tracker: &mut OffsetTracker,
    partition: &TopicPartition,
    offset: i64,
    generation: u64,
) {
    let Some(through) = tracker.finish(partition, offset, generation) else {
        return;
    };
    let (topic, partition) = partition;
    // store_offset records `through + 1` as the next offset to read; auto-commit sends it.
    if let Err(error) = consumer.store_offset(topic, *partition, through) {
        // The partition was revoked in the meantime: its new owner reads from the last commit.
        tracing::debug!(%topic, partition, offset = through, %error, "offset not stored");
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
