//! Avara's webhook (`../shared/avara-webhooks.md`): Standard Webhooks
//! verification, the event envelope, and one handler per event.

pub mod events;
pub mod handlers;
pub mod verify;
pub mod views;

pub use verify::{Verified, VerifyError, WebhookKeys};
