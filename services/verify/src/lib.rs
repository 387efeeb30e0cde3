//! Verification of Standard Webhooks requests, as Herald sends them, for Rust receivers: the
//! signature over the raw body bytes (any of several `v1,` entries may match, compared in constant
//! time), and the timestamp within a tolerance both ways. With the `receiver` feature (on by
//! default) it also provides the reference receiver used by Herald's demo and tests.

pub mod signature;
mod verify;

#[cfg(feature = "receiver")]
pub mod receiver;

pub use signature::{Secret, SecretError};
pub use verify::{DEFAULT_TOLERANCE, Verified, Verifier, VerifyError};
