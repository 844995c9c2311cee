//! Outbound webhooks (issue 9): the gateway telling a RIS, an AI service or
//! a router what happened, as signed Standard Webhooks messages.
//!
//! This slice holds the subscriptions only: who is told what, where, and
//! with which secrets ([`subscription`]), and the secrets themselves
//! ([`secret`]). Everything here is checked once, at the operator API, before
//! it reaches the index: a [`Subscription`] in the index is always valid.
//! The outbox, the delivery worker and the events build on these types.

pub mod secret;
pub mod subscription;

pub use secret::SigningSecret;
pub use subscription::{
    EventType, NewSubscription, Patch, SECRET_OVERLAP, Subscription, SubscriptionView,
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of an operator's request that cannot be used; `field` is its
    /// name in the API (camelCase).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The operating system's random source failed (no secret or id can be
    /// made without it).
    #[error("the system random source failed: {0}")]
    Random(#[source] getrandom::Error),
}

impl Error {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
