//! The DICOM accept loop: peer checks, connections that have not associated
//! kept apart and bounded, a bounded number of associations, negotiation, and
//! a drain with a deadline at shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::{
    AsyncServerAssociation, DefaultNegotiation, ServerAssociationOptions,
};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, Pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::access::AeAccess;
use super::association::{Association, End, Pace};
use super::pending::{self, PendingSet};
use super::sop_classes::STORAGE_SOP_CLASSES;
use crate::activity::Activity;
use crate::config::Config;
use crate::ingest::Ingest;

mod tls;

type Options = ServerAssociationOptions<'static, AeAccess, DefaultNegotiation>;

/// Connections from outside `allowed_peers` kept while they are refused.
const STRANGERS: usize = 16;

/// Everything the DICOM side needs, built once from the configuration.
pub struct DicomServer {
    options: Options,
    /// The same options with the TLS listener's rustls configuration.
    tls_options: Option<Options>,
    /// That configuration, for refusing over TLS when no slot is free.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    ingest: Arc<Ingest>,
    activity: Activity,
    slots: Arc<Semaphore>,
    pending: Arc<PendingSet>,
    /// Connections from outside `allowed_peers` waiting for their refusal.
    strangers: Arc<PendingSet>,
    allowed_peers: Vec<IpAddr>,
    grace: Duration,
    artim: Duration,
    pace: Pace,
    /// The storage commitment SCP, when served.
    commitments: Option<Arc<crate::commitment::Commitments>>,
}

impl DicomServer {
    pub fn new(cfg: &Config, ingest: Arc<Ingest>, activity: Activity) -> DicomServer {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(AeAccess::new(&cfg.allowed_calling_aets))
            .ae_title(cfg.ae_title.trim().to_owned())
            .max_pdu_length(cfg.max_pdu_length)
            .strict(true)
            .read_timeout(cfg.read_timeout())
            .write_timeout(cfg.write_timeout())
            .with_abstract_syntax(dicom_dictionary_std::uids::VERIFICATION)
            .with_abstract_syntax(crate::commitment::SOP_CLASS);
        for class in STORAGE_SOP_CLASSES {
            options = options.with_abstract_syntax(*class);
        }
        for class in &cfg.extra_sop_classes {
            options = options.with_abstract_syntax(class.clone());
        }
        // No transfer syntax list: dicom-ul then accepts every syntax the
        // registry can parse (with `deflate`, all of them); encapsulated pixel
        // data is passed through untouched.
        DicomServer {
            options,
            tls_options: None,
            tls_config: None,
            ingest,
            activity,
            slots: Arc::new(Semaphore::new(cfg.max_associations)),
            pending: PendingSet::new(cfg.max_pending_connections),
            strangers: PendingSet::new(STRANGERS),
            allowed_peers: cfg.allowed_peers.clone(),
            grace: cfg.shutdown_grace(),
            artim: cfg.artim_timeout(),
            pace: Pace {
                min_rate: cfg.min_data_rate,
                read_timeout: cfg.read_timeout(),
            },
            commitments: None,
        }
    }

    /// Serves [`DicomServer::serve_tls`] with this rustls configuration
    /// (see src/tls.rs).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> DicomServer {
        self.tls_options = Some(self.options.clone().tls_config(Arc::clone(&config)));
        self.tls_config = Some(config);
        self
    }

    /// Serves the Storage Commitment Push Model SCP with `commitments`.
    pub fn with_commitments(mut self, commitments: Arc<crate::commitment::Commitments>) -> Self {
        self.commitments = Some(commitments);
        self
    }

    /// Accepts associations until `cancel` fires, then lets the ones in flight
    /// finish for the grace period and aborts whatever is left.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        self.accept_loop(listener, cancel, false).await
    }

    /// [`DicomServer::serve`] for the TLS listener: the same peer checks,
    /// bounds, slots and drain, each connection's TLS handshake first.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        self.accept_loop(listener, cancel, true).await
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
        tls: bool,
    ) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        loop {
            let (socket, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = cancel.cancelled() => break,
            };
            // Counted (and, when full, the oldest of the greediest host
            // closed) here, in accept order; an association slot only once
            // its request is complete. Peers outside allowed_peers wait for
            // their refusal in a small set of their own, so they can never
            // push a modality out.
            let stranger =
                !self.allowed_peers.is_empty() && !self.allowed_peers.contains(&peer.ip());
            let set = if stranger {
                &self.strangers
            } else {
                &self.pending
            };
            let (waiting, evicted) = set.admit(peer.ip());
            if evicted && !stranger {
                tracing::warn!(
                    limit = self.pending.len(),
                    "max_pending_connections reached; closed the oldest connection without a request"
                );
            }
            let server = Arc::clone(&self);
            let (cancel, hard_stop) = (cancel.clone(), hard_stop.clone());
            tracker.spawn(async move {
                if tls {
                    server
                        .handle_tls(socket, peer, waiting, cancel, hard_stop)
                        .await
                } else {
                    server
                        .handle(socket, peer, waiting, cancel, hard_stop)
                        .await
                }
            });
        }
        drop(listener);
        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(associations = tracker.len(), grace = ?self.grace, "waiting for associations to finish");
        }
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                associations = tracker.len(),
                "grace period over; aborting associations"
            );
            hard_stop.cancel();
            tracker.wait().await;
        }
        Ok(())
    }

    async fn handle(
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
            tracing::warn!(%peer, "connection from a peer not in allowed_peers; rejected");
            crate::metrics::get().association_rejected("peer_not_allowed");
            // Read (at most ARTIM) what it sends, so it sees the refusal.
            let reason =
                AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::NoReasonGiven);
            let stop = waiting.evicted.clone();
            tokio::select! {
                () = reject(socket, AssociationRJResult::Permanent, reason, self.artim) => {}
                () = stop.cancelled() => {}
                () = cancel.cancelled() => {}
            }
            return;
        }
        // The whole handshake, request to A-ASSOCIATE-AC, within ARTIM.
        let artim_over = tokio::time::Instant::now() + self.artim;
        let arrived = tokio::select! {
            arrived = pending::request_arrived(&socket, self.artim, &waiting.evicted) => arrived,
            () = cancel.cancelled() => return,
        };
        if let Err(e) = arrived {
            tracing::info!(%peer, reason = %e, "connection closed before associating");
            crate::metrics::get().association_rejected("no_request");
            return;
        }
        drop(waiting);
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            tracing::warn!(%peer, "max_associations reached; association rejected (transient)");
            crate::metrics::get().association_rejected("max_associations");
            let reason = AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            );
            reject(socket, AssociationRJResult::Transient, reason, self.artim).await;
            return;
        };
        let assoc = tokio::select! {
            assoc = tokio::time::timeout_at(artim_over, self.options.establish_async(socket)) => assoc,
            () = hard_stop.cancelled() => return,
        };
        let assoc = match assoc {
            Ok(Ok(assoc)) => assoc,
            Err(_) => {
                drop(slot);
                tracing::warn!(%peer, artim = ?self.artim, "association not established within the ARTIM time");
                crate::metrics::get().association_rejected("artim_timeout");
                return;
            }
            Ok(Err(e)) => {
                drop(slot);
                tracing::warn!(%peer, error = %e, "association not established");
                crate::metrics::get().association_rejected(rejection_reason(&e));
                return;
            }
        };
        self.associated(assoc, peer, slot, hard_stop, None).await
    }

    /// Serves an established association (plain or TLS; `tls_peer` names
    /// the client certificate) until it ends.
    async fn associated<S>(
        &self,
        assoc: AsyncServerAssociation<S>,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        hard_stop: CancellationToken,
        tls_peer: Option<crate::tls::Names>,
    ) where
        S: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + crate::dicom::wire::OverTcp
            + Unpin
            + Send,
    {
        use dicom_ul::association::Association as _;
        let calling_ae = assoc.peer_ae_title().trim().to_owned();
        let span = tracing::info_span!(
            "association",
            %peer,
            calling_ae = %calling_ae,
            tls_subject = tracing::field::Empty,
            tls_issuer = tracing::field::Empty,
        );
        if let Some(names) = &tls_peer {
            span.record("tls_subject", names.subject.as_str());
            span.record("tls_issuer", names.issuer.as_str());
        }
        async move {
            let _open = crate::metrics::get().association_opened();
            tracing::info!(
                contexts = assoc.presentation_contexts().len(),
                "association established"
            );
            let session = self.activity.begin(peer, &calling_ae);
            let (end, stored) = Association::new(assoc, calling_ae, &self.ingest, self.pace)
                .with_commitments(self.commitments.clone())
                .run(hard_stop, session)
                .await;
            drop(slot);
            match end {
                End::Released => tracing::info!(stored, "association released"),
                End::AbortedByPeer => tracing::info!(stored, "association aborted by peer"),
                End::Aborted(reason) => tracing::warn!(stored, %reason, "association aborted"),
            }
        }
        .instrument(span)
        .await
    }
}

/// The metrics label of a failed negotiation.
fn rejection_reason(e: &dicom_ul::association::Error) -> &'static str {
    use dicom_ul::association::Error;
    match e {
        Error::Rejected { association_rj, .. } => match &association_rj.source {
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            ) => "calling_ae_not_allowed",
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            ) => "called_ae_unknown",
            _ => "negotiation_rejected",
        },
        _ => "negotiation_failed",
    }
}

/// Answers a connection we will not serve with an A-ASSOCIATE-RJ, after
/// reading (and discarding) its request so the peer sees the answer.
async fn reject<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut socket: S,
    result: AssociationRJResult,
    source: AssociationRJSource,
    wait: Duration,
) {
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(wait, socket.read(&mut scratch)).await;
    let mut out = Vec::new();
    if dicom_ul::write_pdu(
        &mut out,
        &Pdu::AssociationRJ(AssociationRJ { result, source }),
    )
    .is_ok()
    {
        let _ = socket.write_all(&out).await;
    }
    let _ = socket.shutdown().await;
}
