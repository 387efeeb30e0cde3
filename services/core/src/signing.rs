//! Signing of webhook requests. The secret type and the signed message live in `herald-verify`,
//! so the sender and every Rust receiver compute signatures with the same code.

pub use herald_verify::signature::{
    MAX_SECRET_BYTES, MIN_SECRET_BYTES, SECRET_PREFIX, Secret, SecretError, signature_header,
};
