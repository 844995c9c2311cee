//! Outbound events (issue 9) as a receiver sees them: every delivery is
//! verified by `tests/peers/webhook_receiver.py` with the Standard Webhooks
//! reference library against the secret the API returned, and recorded
//! before it is answered. The tests read that record and the gateway's
//! messages API, polling with a deadline; nothing waits a fixed time.

mod delivery;
mod events;
mod guard;
mod hostile;
mod operator;
mod shared;
mod stable;
mod support;
