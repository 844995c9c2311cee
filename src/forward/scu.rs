//! One association to a destination, and C-STOREs on it, sending each
//! instance exactly as stored.
//!
//! The presentation contexts are proposed from the instances about to be
//! sent: one context per (SOP class, stored transfer syntax) pair, offering
//! that transfer syntax only — the gateway never transcodes, so a
//! destination that accepts none of an instance's transfer syntaxes gets a
//! clear refusal on the item rather than altered bytes. The data set is
//! streamed from the store in PDU-sized pieces (two pieces in memory at
//! most, whatever the instance's size), starting right after the file meta
//! group the gateway wrote at ingest.
//!
//! [`connect`] is the one place a transport is chosen: plain TCP, or TLS
//! for a node with `tls = true` (src/tls.rs: the server checked against
//! `dicom_tls_ca`, our certificate presented).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::dimse::{self, StoreResponse};
use crate::config::DicomNode;

/// PS3.8: presentation context ids are odd numbers 1–255.
pub const MAX_CONTEXTS: usize = 128;

/// Largest file meta group accepted when skipping it (the gateway writes a
/// few hundred bytes).
const MAX_META: u32 = 64 * 1024;

/// PDV item overhead inside a P-DATA PDU: length (4), context id, header.
const PDV_OVERHEAD: u32 = 6;

/// A (SOP class, transfer syntax) pair to propose.
pub type Context = (String, String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No association: refused, unreachable, timed out, rejected.
    #[error("cannot associate with {address}: {detail}")]
    Connect { address: String, detail: String },
    /// The destination answered, accepting none of the proposed contexts:
    /// none of these instances can go there as stored.
    #[error("{ae} accepted none of the proposed presentation contexts")]
    NoneAccepted { ae: String },
    /// The association broke (abort, I/O error, time-out, protocol error);
    /// it is unusable.
    #[error("association lost: {0}")]
    Lost(String),
    /// Our own copy could not be read part-way through a send (an S3
    /// stream reset, a disk error): the association is unusable, the
    /// destination is not to blame.
    #[error("reading the stored instance mid-send: {0}")]
    Source(String),
}

/// What became of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination answered; see [`dimse::verdict`].
    Answered(StoreResponse),
    /// The destination accepts no context for the instance's SOP class and
    /// transfer syntax: final.
    NotAccepted(String),
    /// The object is no longer in the store: final.
    Missing,
    /// The object could not be read (before anything was sent): retried.
    Unreadable(String),
    /// The stored object is not a Part-10 file the gateway wrote (no
    /// preamble, no meta group length, cut short): final.
    Corrupt(String),
}

/// The byte stream under the association.
enum Transport {
    /// Both boxed: a rustls connection is over a kilobyte of state.
    Plain(Box<AsyncClientAssociation<tokio::net::TcpStream>>),
    Tls(Box<AsyncClientAssociation<crate::tls::ClientStream>>),
}

/// An established association and what it negotiated.
pub struct Link {
    transport: Transport,
    /// Accepted contexts: pair → presentation context id.
    accepted: HashMap<Context, u8>,
    /// Proposed and refused: pair → why.
    refused: HashMap<Context, String>,
    /// Data bytes per PDV.
    chunk: usize,
    message_id: u16,
}

/// Opens an association from `calling_ae` to `node`, proposing `wanted`
/// (at most [`MAX_CONTEXTS`]).
pub async fn connect(
    node: &DicomNode,
    calling_ae: &str,
    wanted: &BTreeSet<Context>,
    max_pdu: u32,
    timeout: Duration,
    tls: Option<&crate::tls::TlsClient>,
) -> Result<Link, Error> {
    let address = node.address();
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_owned())
        .called_ae_title(node.ae_title.trim().to_owned())
        .max_pdu_length(max_pdu)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connection_timeout(timeout);
    for (class, ts) in wanted.iter().take(MAX_CONTEXTS) {
        options = options.with_presentation_context(class.clone(), vec![ts.clone()]);
    }
    let connect_error = |detail: String| Error::Connect {
        address: address.clone(),
        detail,
    };
    let refused_all = |e: &dicom_ul::association::Error| {
        matches!(
            e,
            dicom_ul::association::Error::NoAcceptedPresentationContexts { .. }
        )
    };
    let none_accepted = || Error::NoneAccepted {
        ae: node.ae_title.trim().to_owned(),
    };
    // The whole of connect (+ TLS handshake) + A-ASSOCIATE, bounded (a peer
    // that accepts the TCP connection and never answers must not hold the
    // worker).
    let late = |_| connect_error(format!("no answer within {timeout:?}"));
    // dicom-ul's own read time-out on a silent peer surfaces as an odd
    // error ("peer seems to be sending TLS data"); past the time-out, say
    // what happened.
    let started = std::time::Instant::now();
    let failed = |detail: String| {
        if started.elapsed() >= timeout {
            connect_error(format!("no answer within {timeout:?} ({detail})"))
        } else {
            connect_error(detail)
        }
    };
    let (transport, negotiated, acceptor) = if node.tls {
        let Some(tls) = tls else {
            return Err(connect_error(
                "the node has tls = true and dicom_tls_ca is not set".into(),
            ));
        };
        let mut assoc = tokio::time::timeout(timeout, tls.associate(options, node))
            .await
            .map_err(late)?
            .map_err(|e| match e {
                crate::tls::Error::Associate { source, .. } if refused_all(&source) => {
                    none_accepted()
                }
                other => failed(other.to_string()),
            })?;
        // Without it every C-STORE round trip waits on delayed ACK.
        let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
        let negotiated = assoc.presentation_contexts().to_vec();
        let acceptor = assoc.acceptor_max_pdu_length();
        (Transport::Tls(Box::new(assoc)), negotiated, acceptor)
    } else {
        let mut assoc = tokio::time::timeout(timeout, options.establish_async(address.as_str()))
            .await
            .map_err(late)?
            .map_err(|e| {
                if refused_all(&e) {
                    none_accepted()
                } else {
                    failed(e.to_string())
                }
            })?;
        let _ = assoc.inner_stream().set_nodelay(true);
        let negotiated = assoc.presentation_contexts().to_vec();
        let acceptor = assoc.acceptor_max_pdu_length();
        (Transport::Plain(Box::new(assoc)), negotiated, acceptor)
    };
    let mut accepted = HashMap::new();
    let mut refused = HashMap::new();
    // dicom-ul lists the accepted contexts; the others were refused.
    for (n, pair) in wanted.iter().take(MAX_CONTEXTS).enumerate() {
        let id = u8::try_from(2 * n + 1).unwrap_or(255);
        match negotiated.iter().find(|c| c.id == id) {
            Some(c) if c.reason == PresentationContextResultReason::Acceptance => {
                accepted.insert(pair.clone(), id);
            }
            other => {
                let why = match other.map(|c| &c.reason) {
                    Some(PresentationContextResultReason::AbstractSyntaxNotSupported) => {
                        "the SOP class is not supported"
                    }
                    _ => "the transfer syntax is not accepted",
                };
                refused.insert(
                    pair.clone(),
                    format!(
                        "{} refused {} in {} (sent as stored, never transcoded): {why}",
                        node.ae_title.trim(),
                        pair.0,
                        pair.1
                    ),
                );
            }
        }
    }
    let acceptor = match acceptor {
        0 => 64 * 1024,
        n => n.min(1024 * 1024),
    };
    let chunk = usize::try_from(acceptor.saturating_sub(PDV_OVERHEAD).max(1024)).unwrap_or(1024);
    Ok(Link {
        transport,
        accepted,
        refused,
        chunk,
        message_id: 0,
    })
}

impl Link {
    /// Whether the pair was proposed on this association (accepted or not).
    pub fn covers(&self, pair: &Context) -> bool {
        self.accepted.contains_key(pair) || self.refused.contains_key(pair)
    }

    async fn send(&mut self, pdu: &Pdu) -> Result<(), Error> {
        match &mut self.transport {
            Transport::Plain(a) => a.send(pdu).await,
            Transport::Tls(a) => a.send(pdu).await,
        }
        .map_err(|e| Error::Lost(e.to_string()))
    }

    async fn receive(&mut self) -> Result<Pdu, Error> {
        match &mut self.transport {
            Transport::Plain(a) => a.receive().await,
            Transport::Tls(a) => a.receive().await,
        }
        .map_err(|e| Error::Lost(e.to_string()))
    }

    /// Sends one instance read from `source` (a Part-10 object) with
    /// C-STORE and returns what became of it.
    pub async fn store<R: AsyncRead + Unpin>(
        &mut self,
        pair: &Context,
        sop_instance: &str,
        source: std::io::Result<R>,
    ) -> Result<Outcome, Error> {
        if let Some(why) = self.refused.get(pair) {
            return Ok(Outcome::NotAccepted(why.clone()));
        }
        let Some(&ctx) = self.accepted.get(pair) else {
            return Ok(Outcome::NotAccepted(format!(
                "{} in {} was not proposed on this association",
                pair.0, pair.1
            )));
        };
        let mut source = match source {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Missing),
            Err(e) => return Ok(Outcome::Unreadable(e.to_string())),
        };
        if let Err(e) = skip_meta(&mut source).await {
            return Ok(match e.kind() {
                std::io::ErrorKind::NotFound => Outcome::Missing,
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                    Outcome::Corrupt(e.to_string())
                }
                _ => Outcome::Unreadable(e.to_string()),
            });
        }
        // The first piece is read before the command goes out, so an
        // unreadable object costs nothing on the wire.
        let mut cur = match fill(&mut source, self.chunk).await {
            Ok(c) => c,
            Err(e) => return Ok(Outcome::Unreadable(e.to_string())),
        };
        self.message_id = self.message_id.wrapping_add(1).max(1);
        let id = self.message_id;
        let command = dimse::store_request(id, &pair.0, sop_instance);
        self.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: ctx,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        })
        .await?;
        loop {
            let next = if cur.len() == self.chunk {
                // Past this point a read error cannot be taken back: the
                // association is aborted by the caller dropping it.
                fill(&mut source, self.chunk)
                    .await
                    .map_err(|e| Error::Source(e.to_string()))?
            } else {
                Vec::new()
            };
            let last = next.is_empty();
            self.send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: ctx,
                    value_type: PDataValueType::Data,
                    is_last: last,
                    data: cur,
                }],
            })
            .await?;
            if last {
                break;
            }
            cur = next;
        }
        let response = self.response().await?;
        if response.responded_to.is_some_and(|r| r != id) || response.command_field != 0x8001 {
            return Err(Error::Lost(format!(
                "unexpected response (command {:04X}) to C-STORE {id}",
                response.command_field
            )));
        }
        Ok(Outcome::Answered(response))
    }

    /// Reads the response command set (reassembled up to a bound).
    async fn response(&mut self) -> Result<StoreResponse, Error> {
        let mut command = Vec::new();
        loop {
            match self.receive().await? {
                Pdu::PData { data } => {
                    for pdv in data {
                        if pdv.value_type != PDataValueType::Command {
                            return Err(Error::Lost("a data set came with a response".into()));
                        }
                        if command.len() + pdv.data.len() > dimse::MAX_RESPONSE_BYTES {
                            return Err(Error::Lost("response command set too large".into()));
                        }
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return dimse::parse_response(&command)
                                .map_err(|e| Error::Lost(e.to_string()));
                        }
                    }
                }
                Pdu::AbortRQ { source } => {
                    return Err(Error::Lost(format!("the destination aborted: {source:?}")));
                }
                other => {
                    return Err(Error::Lost(format!(
                        "unexpected {} while waiting for a response",
                        pdu_name(&other)
                    )));
                }
            }
        }
    }

    /// Releases the association (A-RELEASE); errors only logged.
    pub async fn release(self) {
        let released = match self.transport {
            Transport::Plain(a) => (*a).release().await,
            Transport::Tls(a) => (*a).release().await,
        };
        if let Err(e) = released {
            tracing::debug!(error = %e, "forward: release");
        }
    }

    /// Aborts the association (A-ABORT), for one left in an unknown state.
    pub async fn abort(self) {
        let _ = match self.transport {
            Transport::Plain(a) => (*a).abort().await,
            Transport::Tls(a) => (*a).abort().await,
        };
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AssociationAC { .. } => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ { .. } => "A-ASSOCIATE-RJ",
        Pdu::AssociationRQ { .. } => "A-ASSOCIATE-RQ",
        _ => "PDU",
    }
}

/// Reads up to `n` bytes (fewer only at the end).
async fn fill<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut len = 0;
    while len < n {
        match r.read(&mut buf[len..]).await? {
            0 => break,
            k => len += k,
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Skips the preamble, `DICM` and the file meta group, which must start
/// with its group length (the gateway writes it so).
async fn skip_meta<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut head = [0u8; 132 + 12];
    r.read_exact(&mut head).await?;
    if &head[128..132] != b"DICM" {
        return Err(bad("not a Part-10 file (no DICM)"));
    }
    let el = &head[132..];
    if el[..4] != [2, 0, 0, 0] || &el[4..6] != b"UL" || el[6..8] != [4, 0] {
        return Err(bad("the file meta group has no group length"));
    }
    let len = u32::from_le_bytes([el[8], el[9], el[10], el[11]]);
    if len > MAX_META {
        return Err(bad("the file meta group is too long"));
    }
    let skipped = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if skipped != u64::from(len) {
        return Err(bad("the file ends inside its meta group"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part10(meta_len: u32, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0]);
        f.extend_from_slice(&meta_len.to_le_bytes());
        f.extend(std::iter::repeat_n(7u8, meta_len as usize));
        f.extend_from_slice(rest);
        f
    }

    #[tokio::test]
    async fn the_data_set_starts_after_the_meta_group() {
        let file = part10(30, b"DATASET");
        let mut r = file.as_slice();
        skip_meta(&mut r).await.unwrap();
        assert_eq!(fill(&mut r, 4).await.unwrap(), b"DATA");
        assert_eq!(fill(&mut r, 4).await.unwrap(), b"SET");
        assert!(fill(&mut r, 4).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn files_that_are_not_ours_are_refused_not_trusted() {
        let kind = |bytes: Vec<u8>| async move {
            let mut r = bytes.as_slice();
            skip_meta(&mut r).await.unwrap_err().kind()
        };
        use std::io::ErrorKind::{InvalidData, UnexpectedEof};
        assert_eq!(kind(vec![0; 50]).await, UnexpectedEof);
        let mut no_dicm = part10(4, b"");
        no_dicm[128] = b'X';
        assert_eq!(kind(no_dicm).await, InvalidData);
        // A meta group length past the limit is not followed.
        let mut huge = part10(0, b"");
        huge[140..144].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(kind(huge).await, InvalidData);
        // Cut inside the meta group.
        let mut cut = part10(100, b"");
        cut.truncate(200);
        assert_eq!(kind(cut).await, InvalidData);
    }
}
