//! The router: reads events from domain topics and produces one delivery per matching
//! subscription to the deliveries topic, or a rejected record when an event cannot be read.
//! An input offset is stored only after every record produced for it is acknowledged by Kafka.

mod metrics;
mod route;
mod run;

pub use route::{RoutedRecord, route};
pub use run::{RouterError, run};
