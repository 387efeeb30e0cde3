//! Herald's shared parts: the event envelope, subscriptions and their index, Standard Webhooks
//! signing, configuration, record headers, in-order offset tracking and Kafka plumbing. The
//! router and the sender are built from these.

pub mod address;
pub mod config;
pub mod encryption;
pub mod envelope;
pub mod filter;
pub mod headers;
pub mod kafka;
pub mod logging;
pub mod offsets;
pub mod registry;
pub mod retry;
pub mod signing;
pub mod stage;
pub mod subscription;
pub mod telemetry;
pub mod time;
pub mod topics;
pub mod traces;
