//! The HTTP side (axum): health and the operator API.

mod api;
mod error;
mod files;
mod router;
mod uploads;
mod webhook;

use std::net::SocketAddr;
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
) -> std::io::Result<()> {
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    let server =
        axum::serve(listener, service).with_graceful_shutdown(cancel.clone().cancelled_owned());
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = server => result,
        () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("HTTP requests still running after the grace period; dropping them");
            Ok(())
        }
    }
}
