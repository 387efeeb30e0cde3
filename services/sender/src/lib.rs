//! The sender: reads deliveries, signs each one per Standard Webhooks and POSTs it to its
//! subscription's endpoint. A delivery's offset is stored only after its outcome is safe: a 2xx
//! from the endpoint, or an acknowledged dead letter.

mod attempt;
mod client;
mod dead_letter;
mod outcome;
mod run;

pub use attempt::{AttemptError, AttemptResult};
pub use client::WebhookClient;
pub use outcome::{DeadLetterReason, Outcome, decide};
pub use run::{SenderError, run};
