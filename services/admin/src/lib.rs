//! Operator tools behind `herald dlq …` and `herald history`: list and inspect dead letters,
//! redrive them into the deliveries topic, and show the attempts of one delivery.

pub mod dlq;
pub mod history;
mod snapshot;
pub mod subscriptions;

pub use snapshot::SnapshotError;
