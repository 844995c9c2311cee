//! The HTTP side: the Avara webhook, the signed file and upload routes,
//! health and the operator API, served by our own accept loop on hyper
//! (connection cap, head/idle/body time-outs) rather than `axum::serve`,
//! which has none of them.

mod api;
mod commitments;
mod conn;
mod error;
mod files;
mod forward;
mod forward_config;
mod limits;
mod messages;
mod metrics;
mod pace;
mod router;
mod server;
mod stream;
mod subscriptions;
mod ui;
mod uploads;
mod webhook;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use router::router;

use crate::app::App;

/// Serves `app` on `listener` until `cancel` fires, then lets requests in
/// flight finish for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    app: App,
    cancel: CancellationToken,
    grace: Duration,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let cfg = &app.cfg;
    let nofile = limits::raise_nofile();
    let reserved = limits::reserved(cfg, server::SPARE_SLOTS);
    let max_connections = limits::connection_cap(cfg.http_max_connections, nofile, reserved);
    if max_connections < cfg.http_max_connections {
        tracing::warn!(
            max_connections,
            configured = cfg.http_max_connections,
            open_files_limit = nofile,
            reserved_for_the_rest = reserved,
            "HTTP connection limit lowered to fit the open-files limit"
        );
    } else {
        tracing::info!(
            max_connections,
            open_files_limit = nofile,
            "HTTP connection limit"
        );
    }
    let timeouts = conn::Timeouts {
        header: Duration::from_secs(cfg.http_header_timeout),
        idle: Duration::from_secs(cfg.http_idle_timeout),
        body: pace::Pace {
            min_rate: cfg.http_min_body_rate,
            grace: Duration::from_secs(cfg.http_header_timeout),
        },
    };
    let server = server::Server {
        router: router(app),
        timeouts,
        max_connections,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
    };
    server.run(listener, cancel, grace).await;
    Ok(())
}
