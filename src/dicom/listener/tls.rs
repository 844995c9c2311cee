//! The TLS listener's side of the accept loop.
//!
//! dicom-ul's `establish_tls_async` does the handshake and reads the
//! A-ASSOCIATE-RQ in one call, over a `TcpStream` it owns, so the plain
//! listener's order (peek for a complete request while counted among the
//! pending connections, then take a slot) cannot be kept as is:
//! - the connection stays in the pending set (evictable, like any socket
//!   that has not associated) through the handshake and the request, all of
//!   it within the ARTIM time: a peer that stalls the handshake holds
//!   nothing else;
//! - an association slot is taken once the association is established. When
//!   none is free as the connection arrives, the gateway does the TLS
//!   handshake itself, reads the request and answers a transient
//!   A-ASSOCIATE-RJ (local limit exceeded), as the plain listener does;
//!   only when the last slot went during the handshake is the association
//!   aborted after its A-ASSOCIATE-AC (the peer retries, as after a
//!   transient rejection). A slot is never held through a handshake: a
//!   peer stalling it holds nothing but its pending-connection place.
//!
//! A peer outside `allowed_peers` is closed before any TLS work: there is
//! no plaintext way to tell a TLS client why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::pdu::{
    AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJSource,
};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::DicomServer;
use crate::dicom::pending;

impl DicomServer {
    pub(super) async fn handle_tls(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        waiting: pending::Pending,
        cancel: CancellationToken,
        hard_stop: CancellationToken,
    ) {
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        if !self.allowed_peers.is_empty() && !self.allowed_peers.contains(&peer.ip()) {
            tracing::warn!(%peer, "TLS connection from a peer not in allowed_peers; closed");
            crate::metrics::get().association_rejected("peer_not_allowed");
            return;
        }
        let Some(options) = &self.tls_options else {
            tracing::error!(%peer, "TLS listener without a TLS configuration; closed");
            return;
        };
        if self.slots.available_permits() == 0 {
            tracing::warn!(%peer, "max_associations reached; TLS association rejected (transient)");
            crate::metrics::get().association_rejected("max_associations");
            let Some(config) = self.tls_config.clone() else {
                return;
            };
            tokio::select! {
                () = refuse_full(socket, config, self.artim) => {}
                () = waiting.evicted.cancelled() => {}
                () = cancel.cancelled() => {}
            }
            return;
        }
        // Handshake, request and A-ASSOCIATE-AC, all within ARTIM.
        let established = tokio::select! {
            r = tokio::time::timeout(self.artim, options.establish_tls_async(socket)) => r,
            () = waiting.evicted.cancelled() => {
                tracing::info!(%peer, "TLS connection closed before associating to make room for a newer one");
                crate::metrics::get().association_rejected("no_request");
                return;
            }
            () = cancel.cancelled() => return,
        };
        drop(waiting);
        let mut assoc = match established {
            Ok(Ok(assoc)) => assoc,
            Err(_) => {
                tracing::warn!(%peer, artim = ?self.artim, "TLS handshake and association not done within the ARTIM time");
                crate::metrics::get().association_rejected("artim_timeout");
                return;
            }
            Ok(Err(e)) => {
                use dicom_ul::association::Error;
                if let Error::TlsHandshake { source, .. } = &e {
                    // The reason is rustls': no certificate, unknown
                    // issuer, not TLS at all (a plain DICOM client), ...
                    tracing::warn!(%peer, reason = %source, "TLS handshake failed; connection closed");
                    crate::metrics::get().association_rejected("tls_handshake");
                } else {
                    tracing::warn!(%peer, error = %e, "association not established (TLS)");
                    crate::metrics::get().association_rejected(super::rejection_reason(&e));
                }
                return;
            }
        };
        let names = crate::tls::peer_names(assoc.inner_stream().get_ref().1);
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(%peer, "max_associations reached; TLS association aborted (transient)");
            crate::metrics::get().association_rejected("max_associations");
            let _ = assoc.abort().await;
            return;
        };
        self.associated(assoc, peer, slot, hard_stop, names).await
    }
}

/// A transient A-ASSOCIATE-RJ (local limit exceeded) over TLS, all of it
/// within `artim`: our own handshake (the listener's configuration, client
/// certificates checked as usual), the request read and dropped, the
/// rejection. A failed handshake just closes.
async fn refuse_full(socket: TcpStream, config: Arc<rustls::ServerConfig>, artim: Duration) {
    let work = async {
        let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(socket).await else {
            return;
        };
        let reason = AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        );
        super::reject(tls, AssociationRJResult::Transient, reason, artim).await;
    };
    let _ = tokio::time::timeout(artim, work).await;
}
