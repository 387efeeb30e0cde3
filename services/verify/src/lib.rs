//! Verification of Standard Webhooks requests, as Herald sends them, for Rust receivers: the
//! signature over the raw body bytes (any of several `v1,` entries may match, compared in constant
//! time), the timestamp within a tolerance both ways, ids already received, and the source
//! address. [`Inbox`] does all of it in one framework-neutral call. With the `receiver` feature (on by
//! default) it also provides the reference receiver used by Herald's demo and tests.

mod inbox;
pub mod network;
pub mod replay;
pub mod signature;
mod verify;

#[cfg(feature = "receiver")]
pub mod receiver;

pub use inbox::{Accepted, Inbox, Rejection};
pub use network::SourceAllowList;
pub use replay::ReplayStore;
pub use signature::{Secret, SecretError};
pub use verify::{DEFAULT_TOLERANCE, Verified, Verifier, VerifyError};
