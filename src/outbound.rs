//! Outbound webhooks (issue 9): the gateway telling a RIS, an AI service or
//! a router what happened, as signed Standard Webhooks messages.
//!
//! - [`subscription`]: who is told what, where, with which secrets
//!   ([`secret`]); checked once, at the operator API, so a [`Subscription`]
//!   in the index is always valid.
//! - [`event`]: what happened, built from the records a change wrote and
//!   queued in the index's outbox in that change's transaction
//!   (`crate::index`): an acknowledged instance always has its events, an
//!   instance not stored never has any.
//! - [`message`]: one event for one subscription, and its retry schedule.
//! - [`delivery`]: one signed attempt; [`worker`]: the loop that makes
//!   them, in order per study, never on ingest's path.
//! - [`stable`]: `study.stable`, from timers kept in the index.

pub mod delivery;
pub mod event;
pub mod message;
pub mod secret;
pub mod stable;
pub mod subscription;
pub mod worker;

pub use event::{Event, Refusal, now_ms};
pub use message::{DEFAULT_SCHEDULE, Message, MessageView, Outcome, State};
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
    #[error(transparent)]
    Index(#[from] crate::index::Error),
    #[error("indexing what other gateways stored of the study: {0}")]
    Maintenance(#[from] crate::maintenance::Error),
    #[error("listing {prefix} in the store: {detail}")]
    List { prefix: String, detail: String },
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
