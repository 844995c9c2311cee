//! One association: the receive loop, command reassembly, C-ECHO, C-STORE
//! streamed into the ingest path, refusals, release and abort.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::{self, Incoming, Pdv};
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::dimse::{self, Command, field, status};
use crate::ingest::{self, Check, ErrorKind, Expected, Ingest, Receiving};
use crate::uid::Uid;
use commitment::{ActionBuffer, CommitmentSession};

mod commitment;

/// Largest command set we reassemble. Real ones are a few hundred bytes.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Why an association ended, for the log line that closes its span.
#[derive(Debug)]
pub enum End {
    Released,
    AbortedByPeer,
    /// We sent an A-ABORT (or the connection was already gone).
    Aborted(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Released => f.write_str("released"),
            End::AbortedByPeer => f.write_str("aborted by peer"),
            End::Aborted(reason) => write!(f, "aborted: {reason}"),
        }
    }
}

/// An accepted presentation context.
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

/// What the data PDVs that follow a command are for.
enum Sink {
    /// A C-STORE being spooled; `Err` once it failed (the rest is discarded).
    Store {
        expected: Expected,
        receiving: Result<Box<Receiving>, ingest::Error>,
    },
    /// Read and drop the data set, then answer with this status.
    Refuse { status: u16, comment: String },
    /// A storage commitment N-ACTION's data set (`commitment.rs`).
    Action(ActionBuffer),
}

struct Pending {
    pc: u8,
    command: Command,
    sink: Sink,
    /// When its command arrived, and the data set bytes since.
    started: Instant,
    received: u64,
}

impl Pending {
    fn new(pc: u8, command: Command, sink: Sink) -> Pending {
        Pending {
            pc,
            command,
            sink,
            started: Instant::now(),
            received: 0,
        }
    }
}

/// How slow a peer may be: one PDU must arrive whole within
/// `read_timeout`, and a data set must average `min_rate` bytes/s once it
/// has taken longer than that.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub min_rate: u64,
    pub read_timeout: Duration,
}

impl Pace {
    fn too_slow(&self, started: Instant, received: u64) -> bool {
        let elapsed = started.elapsed();
        self.min_rate > 0
            && elapsed > self.read_timeout
            && u128::from(received) * 1000 < u128::from(self.min_rate) * elapsed.as_millis()
    }
}

/// Generic over the stream so the TLS listener shares it; `TcpStream` for
/// the plain one.
pub struct Association<'a, S = TcpStream> {
    assoc: AsyncServerAssociation<S>,
    ingest: &'a Ingest,
    calling_ae: String,
    contexts: HashMap<u8, Context>,
    command_buf: Vec<u8>,
    command_pc: Option<u8>,
    pending: Option<Pending>,
    pace: Pace,
    /// Instances stored, for the closing log line.
    stored: u64,
    /// This association's line on the operator page.
    session: Option<crate::activity::Session>,
    /// Storage commitment requests of this association (`commitment.rs`).
    commitment: CommitmentSession,
}

impl<'a, S> Association<'a, S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::dicom::wire::OverTcp + Unpin + Send,
{
    pub fn new(
        assoc: AsyncServerAssociation<S>,
        calling_ae: String,
        ingest: &'a Ingest,
        pace: Pace,
    ) -> Self {
        let contexts = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
                let ctx = Context {
                    abstract_syntax: clean(&pc.abstract_syntax),
                    transfer_syntax: clean(&pc.transfer_syntax),
                };
                (pc.id, ctx)
            })
            .collect();
        Association {
            assoc,
            ingest,
            calling_ae,
            contexts,
            command_buf: Vec::new(),
            command_pc: None,
            pending: None,
            pace,
            stored: 0,
            session: None,
            commitment: CommitmentSession::default(),
        }
    }

    /// Serves the association until it is released or aborted, or until
    /// `hard_stop` (the end of the shutdown grace period) fires. Returns how
    /// it ended and how many instances it stored.
    pub async fn run(
        mut self,
        hard_stop: CancellationToken,
        session: crate::activity::Session,
    ) -> (End, u64) {
        self.session = Some(session);
        let max_pdu = self.assoc.acceptor_max_pdu_length();
        let read_timeout = self.pace.read_timeout;
        let end = loop {
            let pdu = tokio::select! {
                pdu = wire::receive(&mut self.assoc, max_pdu, read_timeout) => pdu,
                () = hard_stop.cancelled() => break End::Aborted("shutdown grace period over".into()),
            };
            match pdu {
                Ok(Incoming::PData(pdvs)) => {
                    if let Err(reason) = self.on_pdata(pdvs).await {
                        break End::Aborted(reason);
                    }
                }
                Ok(Incoming::Other(Pdu::ReleaseRQ)) => {
                    if self.pending.is_some() {
                        tracing::warn!(
                            "release requested in the middle of a data set; it is discarded"
                        );
                    }
                    self.pending = None;
                    let _ = self.assoc.send(&Pdu::ReleaseRP).await;
                    break End::Released;
                }
                Ok(Incoming::Other(Pdu::AbortRQ { source })) => {
                    tracing::debug!(?source, "peer aborted");
                    break End::AbortedByPeer;
                }
                Ok(Incoming::Other(other)) => {
                    break End::Aborted(format!("unexpected {} PDU", pdu_name(&other)));
                }
                Err(e) => break End::Aborted(e.to_string()),
            }
        };
        // Anything half-received is dropped here, removing its spool file.
        self.pending = None;
        let stored = self.stored;
        if let End::Aborted(_) = end {
            let _ = self.assoc.abort().await;
        }
        if let Some(session) = self.session.take() {
            session.end(&end.to_string());
        }
        (end, stored)
    }

    async fn on_pdata(&mut self, pdvs: Vec<Pdv>) -> Result<(), String> {
        for pdv in pdvs {
            if !self.contexts.contains_key(&pdv.pc) {
                return Err(format!(
                    "PDV on presentation context {} which was not accepted",
                    pdv.pc
                ));
            }
            if pdv.command {
                self.on_command_fragment(pdv).await?;
            } else {
                self.on_data(pdv).await?;
            }
        }
        Ok(())
    }

    async fn on_command_fragment(&mut self, pdv: Pdv) -> Result<(), String> {
        if self.pending.is_some() {
            return Err("command PDV while a data set was expected".into());
        }
        if self.command_pc.is_some_and(|pc| pc != pdv.pc) {
            return Err("command fragments on different presentation contexts".into());
        }
        if self.command_buf.len() + pdv.data.len() > MAX_COMMAND_BYTES {
            return Err("command set larger than 64 KiB".into());
        }
        self.command_pc = Some(pdv.pc);
        self.command_buf.extend_from_slice(&pdv.data);
        if !pdv.last {
            return Ok(());
        }
        let pc = self.command_pc.take().expect("set above");
        let bytes = std::mem::take(&mut self.command_buf);
        let command = Command::parse(&bytes).map_err(|e| e.to_string())?;
        self.on_command(pc, command).await
    }

    async fn on_command(&mut self, pc: u8, command: Command) -> Result<(), String> {
        if command.field == field::N_EVENT_REPORT_RSP {
            return self.on_event_report_rsp(command).await;
        }
        if !command.is_request() {
            return Err(format!(
                "unexpected response command 0x{:04X}",
                command.field
            ));
        }
        match command.field {
            field::C_ECHO_RQ if !command.has_dataset => {
                self.respond(pc, &command, status::SUCCESS, None).await
            }
            field::C_STORE_RQ if command.has_dataset => {
                let sink = self.start_store(pc, &command).await;
                self.pending = Some(Pending::new(pc, command, sink));
                Ok(())
            }
            field::C_STORE_RQ => {
                let comment = "C-STORE-RQ without a data set";
                self.respond(pc, &command, status::CANNOT_UNDERSTAND, Some(comment))
                    .await
            }
            // Nothing of ours is cancellable; C-CANCEL has no response.
            field::C_CANCEL_RQ => Ok(()),
            field::N_ACTION_RQ => self.on_n_action(pc, command).await,
            other => {
                tracing::info!(
                    command = format_args!("0x{other:04X}"),
                    "refusing unsupported DIMSE command"
                );
                let comment = "operation not supported by this gateway".to_owned();
                let refusal = Sink::Refuse {
                    status: status::UNRECOGNIZED_OPERATION,
                    comment,
                };
                if command.has_dataset {
                    self.pending = Some(Pending::new(pc, command, refusal));
                    Ok(())
                } else {
                    let comment = "operation not supported by this gateway";
                    self.respond(pc, &command, status::UNRECOGNIZED_OPERATION, Some(comment))
                        .await
                }
            }
        }
    }

    /// Validates a C-STORE command and opens its spool file.
    async fn start_store(&mut self, pc: u8, command: &Command) -> Sink {
        let refuse = |status, comment: String| Sink::Refuse { status, comment };
        let uid = |value: &Option<String>, name: &str| match value.as_deref().map(Uid::parse) {
            Some(Ok(uid)) => Ok(uid),
            Some(Err(e)) => Err(format!("{name}: {e}")),
            None => Err(format!("no {name}")),
        };
        let expected = match (
            uid(&command.affected_sop_class, "Affected SOP Class UID"),
            uid(&command.affected_sop_instance, "Affected SOP Instance UID"),
        ) {
            (Ok(sop_class), Ok(sop_instance)) => Expected {
                sop_class,
                sop_instance,
            },
            (Err(e), _) | (_, Err(e)) => return refuse(status::CANNOT_UNDERSTAND, e),
        };
        let ctx = &self.contexts[&pc];
        if ctx.abstract_syntax != expected.sop_class.as_str() {
            let comment = format!("SOP class differs from presentation context {pc}");
            return refuse(status::SOP_CLASS_NOT_SUPPORTED, comment);
        }
        let receiving = self
            .ingest
            .begin_dataset(&ctx.transfer_syntax, &expected, &self.calling_ae)
            .await
            .map(Box::new);
        Sink::Store {
            expected,
            receiving,
        }
    }

    async fn on_data(&mut self, pdv: Pdv) -> Result<(), String> {
        let arrived = Instant::now(); // for the ingest latency metric
        let Some(pending) = self.pending.as_mut() else {
            return Err("data PDV without a command".into());
        };
        if pending.pc != pdv.pc {
            return Err("data PDV on another presentation context than its command".into());
        }
        pending.received = pending.received.saturating_add(pdv.data.len() as u64);
        crate::metrics::get().received("dicom", pdv.data.len());
        if self.pace.too_slow(pending.started, pending.received) {
            return Err(format!(
                "data set arriving slower than min_data_rate ({} bytes/s)",
                self.pace.min_rate
            ));
        }
        if let Sink::Store {
            receiving: receiving @ Ok(_),
            ..
        } = &mut pending.sink
        {
            let writer = receiving.as_mut().expect("matched Ok");
            if let Err(e) = writer.append(&pdv.data).await {
                // Dropping the Receiving removes its spool file; the rest of
                // the data set is read and discarded.
                *receiving = Err(e);
            }
        }
        if let Sink::Action(buffer) = &mut pending.sink {
            buffer.append(&pdv.data);
        }
        if !pdv.last {
            return Ok(());
        }
        let Pending {
            pc, command, sink, ..
        } = self.pending.take().expect("checked above");
        let (code, comment) = match sink {
            Sink::Refuse { status, comment } => (status, Some(comment)),
            Sink::Action(buffer) => return self.finish_n_action(pc, command, buffer).await,
            Sink::Store {
                expected,
                receiving,
            } => self.finish_store(expected, receiving).await,
        };
        if let (true, Some(session)) = (dimse::is_failure(code), &self.session) {
            let uid = |v: &Option<String>| v.as_deref().unwrap_or("").to_owned();
            let (sop, class) = (&command.affected_sop_instance, &command.affected_sop_class);
            session.refused(
                code,
                comment.as_deref().unwrap_or(""),
                &uid(sop),
                &uid(class),
            );
        }
        if dimse::is_failure(code) {
            self.ingest.tell_refused(&crate::outbound::Refusal {
                status: code,
                reason: comment.as_deref().unwrap_or(""),
                calling_ae: &self.calling_ae,
                sop_instance_uid: command.affected_sop_instance.as_deref().unwrap_or(""),
                sop_class_uid: command.affected_sop_class.as_deref().unwrap_or(""),
            });
        }
        let sent = self.respond(pc, &command, code, comment.as_deref()).await;
        if command.field == field::C_STORE_RQ {
            crate::metrics::get().instance_answered(code, &self.calling_ae, arrived.elapsed());
        }
        sent
    }

    async fn finish_store(
        &mut self,
        expected: Expected,
        receiving: Result<Box<Receiving>, ingest::Error>,
    ) -> (u16, Option<String>) {
        let result = match receiving {
            Ok(receiving) => self.ingest.finish(*receiving, Check::from(&expected)).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(stored) => {
                self.stored += 1;
                if let Some(session) = &self.session {
                    session.stored(stored.record.size);
                }
                tracing::debug!(
                    sop_instance_uid = %stored.record.sop_instance_uid,
                    study = %stored.record.study_instance_uid,
                    bytes = stored.record.size,
                    outcome = ?stored.outcome,
                    "stored"
                );
                if let crate::index::PutOutcome::Replaced { .. } = stored.outcome {
                    tracing::info!(sop_instance_uid = %stored.record.sop_instance_uid, "instance received again; replaced");
                }
                (status::SUCCESS, None)
            }
            Err(e) => {
                let code = match e.kind() {
                    ErrorKind::Unparseable => status::CANNOT_UNDERSTAND,
                    ErrorKind::Mismatch => status::DATASET_MISMATCH,
                    ErrorKind::Duplicate => status::DUPLICATE_SOP_INSTANCE,
                    ErrorKind::OutOfResources | ErrorKind::TooLarge => status::OUT_OF_RESOURCES,
                };
                if let ingest::Error::Duplicate { stored_study, .. } = &e {
                    tracing::warn!(
                        sop_instance_uid = %expected.sop_instance,
                        %stored_study,
                        refused_so_far = self.ingest.duplicates_refused(),
                        "duplicate SOP Instance UID refused by the duplicate policy; the stored instance stays"
                    );
                }
                tracing::warn!(
                    sop_instance_uid = %expected.sop_instance,
                    status = format_args!("0x{code:04X}"),
                    error = %e,
                    "instance refused"
                );
                (code, Some(e.to_string()))
            }
        }
    }

    async fn respond(
        &mut self,
        pc: u8,
        command: &Command,
        code: u16,
        comment: Option<&str>,
    ) -> Result<(), String> {
        let data = dimse::response(command, code, comment);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        };
        self.assoc
            .send(&pdu)
            .await
            .map_err(|e| format!("sending response: {e}"))
    }
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::AbortRQ { .. } => "A-ABORT",
        Pdu::Unknown { .. } => "unknown",
    }
}
