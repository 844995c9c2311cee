//! Storage commitment on the requester's own association: the N-ACTION-RQ
//! is read, recorded durably, answered, and the N-EVENT-REPORT-RQ sent on
//! the same association; its N-EVENT-REPORT-RSP marks the request
//! delivered. Whatever is not answered with success by the time the
//! association ends goes to `crate::commitment::worker` (the [`Claim`]s
//! are dropped with the association).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dicom_ul::pdu::Pdu;

use super::{Association, Pending, Sink};
use crate::commitment::request::{self, MAX_DATASET_BYTES, Refusal, status};
use crate::commitment::{Claim, Commitments, Record, State, report};
use crate::dicom::dimse::{Command, status as dimse_status};
use crate::uid::Uid;

/// Commitment requests one association may have awaiting their
/// N-EVENT-REPORT-RSP; more are still recorded and reported by the worker.
const MAX_AWAITING: usize = 64;

/// The association's part of the storage commitment SCP.
#[derive(Debug, Default)]
pub struct CommitmentSession {
    commitments: Option<Arc<Commitments>>,
    /// Requests of this association the worker must leave alone while it
    /// is open.
    claims: Vec<Claim>,
    /// N-EVENT-REPORT-RQ message id → the request it reports.
    awaiting: HashMap<u16, (String, Uid)>,
    next_message_id: u16,
}

/// N-ACTION data set bytes all associations together may hold at once:
/// `max_associations` peers each sending a 16 MiB request must not add up
/// to gigabytes.
const BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Bytes held by every [`ActionBuffer`] now.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// An N-ACTION data set being received, bounded by [`MAX_DATASET_BYTES`]
/// and by the process-wide [`BUDGET_BYTES`].
#[derive(Debug, Default)]
pub struct ActionBuffer {
    bytes: Vec<u8>,
    over: bool,
    /// Over because the other associations hold the budget.
    busy: bool,
    /// Already refused by its command: the data set is read and dropped.
    refused: Option<Refusal>,
}

impl ActionBuffer {
    pub fn append(&mut self, data: &[u8]) {
        if self.refused.is_some() || self.over {
            return;
        }
        if self.bytes.len().saturating_add(data.len()) > MAX_DATASET_BYTES {
            // The rest is read and dropped; the request is refused.
            self.drop_bytes();
            self.over = true;
            return;
        }
        let reserved = HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(data.len()).filter(|&n| n <= BUDGET_BYTES)
        });
        if reserved.is_err() {
            self.drop_bytes();
            self.over = true;
            self.busy = true;
            return;
        }
        self.bytes.extend_from_slice(data);
    }

    fn drop_bytes(&mut self) {
        HELD.fetch_sub(self.bytes.len(), Ordering::AcqRel);
        self.bytes = Vec::new();
    }
}

impl Drop for ActionBuffer {
    fn drop(&mut self) {
        self.drop_bytes();
    }
}

impl<'a, S> Association<'a, S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    /// Serves storage commitment on this association.
    pub fn with_commitments(mut self, commitments: Option<Arc<Commitments>>) -> Self {
        self.commitment.commitments = commitments;
        self
    }

    /// An N-ACTION-RQ command arrived.
    pub(super) async fn on_n_action(&mut self, pc: u8, command: Command) -> Result<(), String> {
        let checked = match self.commitment.commitments {
            None => Err(Refusal {
                status: dimse_status::UNRECOGNIZED_OPERATION,
                comment: "operation not supported by this gateway".into(),
            }),
            Some(_) if !command.has_dataset => Err(Refusal {
                status: status::MISSING_ATTRIBUTE,
                comment: "N-ACTION without a data set".into(),
            }),
            // PS3.7 §9.3: the request belongs on a Storage Commitment
            // context; the report would otherwise go out on another one.
            Some(_)
                if self
                    .contexts
                    .get(&pc)
                    .is_none_or(|c| c.abstract_syntax != crate::commitment::SOP_CLASS) =>
            {
                Err(Refusal {
                    status: dimse_status::SOP_CLASS_NOT_SUPPORTED,
                    comment: format!(
                        "N-ACTION on presentation context {pc}, which is not Storage Commitment's"
                    ),
                })
            }
            Some(_) => request::check_command(&command),
        };
        match checked {
            Ok(()) => {
                let sink = Sink::Action(ActionBuffer::default());
                self.pending = Some(Pending::new(pc, command, sink));
                Ok(())
            }
            Err(refusal) if command.has_dataset => {
                let mut buffer = ActionBuffer::default();
                buffer.refused = Some(refusal);
                let sink = Sink::Action(buffer);
                self.pending = Some(Pending::new(pc, command, sink));
                Ok(())
            }
            Err(refusal) => self.refuse_action(pc, &command, &refusal).await,
        }
    }

    async fn refuse_action(
        &mut self,
        pc: u8,
        command: &Command,
        refusal: &Refusal,
    ) -> Result<(), String> {
        tracing::warn!(
            status = format_args!("0x{:04X}", refusal.status),
            reason = %refusal.comment,
            "storage commitment request refused"
        );
        crate::metrics::get().commitment_request("refused");
        let rsp = report::action_response(command, refusal.status, Some(&refusal.comment));
        self.send_message(pc, rsp, None).await
    }

    /// The N-ACTION data set is complete: record, answer, decide, report.
    pub(super) async fn finish_n_action(
        &mut self,
        pc: u8,
        command: Command,
        buffer: ActionBuffer,
    ) -> Result<(), String> {
        if let Some(refusal) = &buffer.refused {
            return self.refuse_action(pc, &command, refusal).await;
        }
        let Some(commitments) = self.commitment.commitments.clone() else {
            return Err("N-ACTION data set without the commitment SCP".into());
        };
        let ts = self.contexts[&pc].transfer_syntax.clone();
        let parsed = if buffer.over {
            Err(Refusal {
                status: status::RESOURCE_LIMITATION,
                comment: if buffer.busy {
                    "too many large commitment requests at once; try again".into()
                } else {
                    "data set larger than 16 MiB".into()
                },
            })
        } else {
            request::parse(&buffer.bytes, &ts)
        };
        drop(buffer);
        let action = match parsed {
            Ok(action) => action,
            Err(refusal) => return self.refuse_action(pc, &command, &refusal).await,
        };
        let mut record = Record::new(
            self.calling_ae.clone(),
            action.transaction,
            action.references,
            crate::commitment::now_ms(),
        );
        // Claimed before it is written: the worker never sees it unclaimed
        // while this association can still report it.
        let claim = commitments.claim(&record.requester, &record.transaction_uid);
        if let Err(e) = commitments.save(&record).await {
            tracing::error!(error = %e, "cannot record a storage commitment request");
            let refusal = Refusal {
                status: status::PROCESSING_FAILURE,
                comment: "cannot record the request".into(),
            };
            return self.refuse_action(pc, &command, &refusal).await;
        }
        tracing::info!(
            transaction_uid = %record.transaction_uid,
            references = record.instances,
            "storage commitment request recorded"
        );
        crate::metrics::get().commitment_request("accepted");
        let rsp = report::action_response(&command, status::SUCCESS, None);
        self.send_message(pc, rsp, None).await?;

        commitments.decide(&mut record).await;
        record.attempts = record.attempts.saturating_add(1);
        if let Err(e) = commitments.save(&record).await {
            // The worker decides again and reports from the first record.
            tracing::error!(error = %e, "cannot record a storage commitment outcome");
            self.commitment.claims.push(claim);
            return Ok(());
        }
        self.commitment.claims.push(claim);
        if self.commitment.awaiting.len() >= MAX_AWAITING {
            return Ok(());
        }
        let Some(data) = report::event_report_dataset(&record, &self.ae_title(), &ts) else {
            return Ok(());
        };
        self.commitment.next_message_id = self.commitment.next_message_id.wrapping_add(1);
        let id = self.commitment.next_message_id;
        let command = report::event_report_command(id, report::event_type(&record));
        self.commitment.awaiting.insert(
            id,
            (record.requester.clone(), record.transaction_uid.clone()),
        );
        tracing::info!(
            transaction_uid = %record.transaction_uid,
            committed = record.committed,
            failed = record.failed,
            "sending the storage commitment report on the requester's association"
        );
        self.send_message(pc, command, Some(data)).await
    }

    /// An N-EVENT-REPORT-RSP came back.
    pub(super) async fn on_event_report_rsp(&mut self, command: Command) -> Result<(), String> {
        if command.has_dataset {
            return Err("N-EVENT-REPORT-RSP with a data set".into());
        }
        let Some((requester, tx)) = self.commitment.awaiting.remove(&command.message_id) else {
            return Err(format!(
                "N-EVENT-REPORT-RSP to message {} which was not sent",
                command.message_id
            ));
        };
        let Some(commitments) = self.commitment.commitments.clone() else {
            return Ok(());
        };
        let code = command.status.unwrap_or(0xFFFF);
        let index = commitments.index.clone();
        let tx2 = tx.clone();
        let found = tokio::task::spawn_blocking(move || index.commitment(&requester, &tx2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(mut record) = found else {
            return Ok(());
        };
        if code == 0 {
            record.finish(State::Delivered);
            record.last_error = None;
            tracing::info!(transaction_uid = %tx, "storage commitment report delivered");
            crate::metrics::get().commitment_report("delivered");
        } else {
            record.last_error = Some(format!("N-EVENT-REPORT-RSP status 0x{code:04X}"));
            tracing::warn!(transaction_uid = %tx, status = format_args!("0x{code:04X}"),
                "storage commitment report refused by the requester; retried on a new association");
            crate::metrics::get().commitment_report("retry");
        }
        if let Err(e) = commitments.save(&record).await {
            tracing::error!(error = %e, "cannot record a storage commitment delivery");
        }
        Ok(())
    }

    /// Our AE title, as the requester called us.
    fn ae_title(&self) -> String {
        self.assoc.called_ae_title().trim().to_owned()
    }

    /// Sends a message, split within the requester's maximum PDU length.
    async fn send_message(
        &mut self,
        pc: u8,
        command: Vec<u8>,
        data: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let max = self.assoc.requestor_max_pdu_length();
        for pdv in report::pdata(pc, command, data, max) {
            self.assoc
                .send(&Pdu::PData { data: vec![pdv] })
                .await
                .map_err(|e| format!("sending a storage commitment message: {e}"))?;
        }
        Ok(())
    }
}
