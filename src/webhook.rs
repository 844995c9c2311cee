//! Avara's webhook (`../shared/avara-webhooks.md`). So far: verification of
//! Standard Webhooks signatures, the gate every event passes before its body
//! is even parsed.

pub mod verify;

pub use verify::{Verified, VerifyError, WebhookKeys};
