//! The sender: reads deliveries, signs each one per Standard Webhooks and POSTs it to its
//! subscription's endpoint. Failed attempts wait on retry tiers, and the delay forwarder sends
//! them back when due. A delivery's offset is stored only after its outcome is safe: a 2xx from
//! the endpoint, or an acknowledged record on a tier or the dead-letter topic.

mod attempt;
mod attempt_log;
mod client;
mod dead_letter;
mod deliver;
mod forwarder;
mod guard;
mod limits;
mod metrics;
mod outcome;
mod run;
#[cfg(test)]
mod tls_tests;

pub use attempt::{AttemptError, AttemptInput, AttemptResult, attempt};
pub use client::{ClientSettings, HttpResponse, WebhookClient, read_ca_file, retry_after};
pub use herald_core::address::{AddressGuard, BlockedAddress, Network};
pub use outcome::{DeadLetterReason, Outcome, decide};
pub use run::{SenderError, run};
