//! Operator tools: the admin HTTP API (`herald admin`), and the commands `herald subscriptions`,
//! `herald dlq` and `herald history`.

pub mod api;
pub mod dlq;
pub mod history;
mod snapshot;
pub mod subscriptions;

pub use snapshot::SnapshotError;
