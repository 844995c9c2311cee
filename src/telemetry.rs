//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text lines for people or as one JSON object per line for log
//! shippers (`log_format`).
//!
//! Secrets and signed URLs are kept out of the log where they are handled
//! (tokens are [`crate::config::Secret`]s, URLs are logged as scheme and
//! host only); the format changes how a line is written, not what is in it.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // `fields` holds `message` and the event's fields; `span` and
        // `spans` the association (peer, calling AE) a line belongs to.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
