//! The harness for Herald's end-to-end tests and demo: unique topics on a real Kafka broker,
//! Herald's router, sender and admin API as child processes, in-process reference receivers, the sample
//! events, and waiting on conditions with deadlines.

pub mod api;
pub mod broker;
pub mod http;
pub mod kafka;
pub mod process;
pub mod samples;
pub mod scenario;
pub mod wait;
