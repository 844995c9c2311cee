//! Sending a report on a new association to the requester (PS3.4 J.3.3):
//! the gateway is the association requestor but the SCP of the Storage
//! Commitment SOP class, so it proposes an SCP/SCU Role Selection sub-item
//! with the SCP role (PS3.7 D.3.3.4; dicom-ul 0.10.1's
//! `with_role_selection`).

use std::time::Duration;

use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValueType, Pdu, PresentationContextResultReason, UserVariableItem};

use super::{Record, SOP_CLASS, report};
use crate::config::DicomNode;
use crate::dicom::dimse::{Command, field};

/// Largest N-EVENT-REPORT-RSP command set read back.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// Why a report did not get through.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("association with {address} failed: {reason}")]
    Associate { address: String, reason: String },
    #[error("{0} accepted no Storage Commitment presentation context")]
    NoContext(String),
    #[error("{0} refused the SCP role for Storage Commitment")]
    RoleRefused(String),
    #[error("sending the report: {0}")]
    Send(String),
    #[error("no answer to the report: {0}")]
    Receive(String),
    #[error("the requester answered the report with status 0x{0:04X}")]
    Status(u16),
    #[error("{0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// How the gateway connects.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ae_title: String,
    pub max_pdu_length: u32,
    pub timeout: Duration,
    /// How a node with `tls = true` is reached (`None`: no `dicom_tls_ca`).
    pub tls: Option<crate::tls::TlsClient>,
}

/// Opens an association to `node`, sends the report of `record` (decided)
/// and waits for its N-EVENT-REPORT-RSP; success only if it says 0x0000.
pub async fn deliver(record: &Record, node: &DicomNode, s: &Settings) -> Result<(), Error> {
    let whole = s.timeout.saturating_mul(3);
    match tokio::time::timeout(whole, attempt(record, node, s)).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(whole)),
    }
}

async fn attempt(record: &Record, node: &DicomNode, s: &Settings) -> Result<(), Error> {
    let address = node.address();
    let options = ClientAssociationOptions::new()
        .calling_ae_title(s.ae_title.trim().to_owned())
        .called_ae_title(node.ae_title.trim().to_owned())
        .with_presentation_context(SOP_CLASS, vec![EXPLICIT_VR_LE, IMPLICIT_VR_LE])
        // We are the requestor and the SCP of this class: ask for the SCP
        // role only.
        .with_role_selection(SOP_CLASS, false, true)
        .max_pdu_length(s.max_pdu_length)
        .read_timeout(s.timeout)
        .write_timeout(s.timeout)
        .connection_timeout(s.timeout);
    if !node.tls {
        let mut assoc = options
            .establish_async(address.as_str())
            .await
            .map_err(|e| Error::Associate {
                address: address.clone(),
                reason: e.to_string(),
            })?;
        // Else the report's data set waits behind its command for the
        // peer's delayed ACK (up to 40 ms), as for forwarding.
        let _ = assoc.inner_stream().set_nodelay(true);
        return talk(assoc, record, node, s).await;
    }
    let Some(tls) = &s.tls else {
        return Err(Error::Associate {
            address,
            reason: "the node has tls = true and dicom_tls_ca is not set".into(),
        });
    };
    let mut assoc = tls
        .associate(options, node)
        .await
        .map_err(|e| Error::Associate {
            address,
            reason: e.to_string(),
        })?;
    let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
    talk(assoc, record, node, s).await
}

/// The report on an established association (plain or TLS).
async fn talk<S>(
    mut assoc: AsyncClientAssociation<S>,
    record: &Record,
    node: &DicomNode,
    s: &Settings,
) -> Result<(), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let Some(pc) = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_owned(),
            )
        })
    else {
        let _ = assoc.abort().await;
        return Err(Error::NoContext(node.ae_title.clone()));
    };
    let (pc, ts) = pc;
    // PS3.7 D.3.3.4: an acceptor that answers the role selection without
    // the SCP role has said no. One that does not answer it at all (many
    // modality stacks) gets the report anyway, as dcm4chee and Orthanc do.
    let answered = assoc.user_variables().iter().find_map(|uv| match uv {
        UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles)
            if uid.trim_end_matches(['\0', ' ']) == SOP_CLASS =>
        {
            Some(roles.scp)
        }
        _ => None,
    });
    match answered {
        Some(false) => {
            let _ = assoc.abort().await;
            return Err(Error::RoleRefused(node.ae_title.clone()));
        }
        None => tracing::debug!(
            requester = %node.ae_title,
            "the requester did not answer the role selection; sending the report anyway"
        ),
        Some(true) => {}
    }
    let result = exchange(&mut assoc, record, s, pc, &ts).await;
    match &result {
        Ok(()) | Err(Error::Status(_)) => {
            let _ = assoc.release().await;
        }
        Err(_) => {
            let _ = assoc.abort().await;
        }
    }
    result
}

async fn exchange<S>(
    assoc: &mut AsyncClientAssociation<S>,
    record: &Record,
    s: &Settings,
    pc: u8,
    ts: &str,
) -> Result<(), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let data = report::event_report_dataset(record, &s.ae_title, ts)
        .ok_or_else(|| Error::Protocol(format!("cannot write transfer syntax {ts}")))?;
    let message_id = 1;
    let command = report::event_report_command(message_id, report::event_type(record));
    let max = assoc.acceptor_max_pdu_length();
    for pdv in report::pdata(pc, command, Some(data), max) {
        assoc
            .send(&Pdu::PData { data: vec![pdv] })
            .await
            .map_err(|e| Error::Send(e.to_string()))?;
    }
    let mut buf = Vec::new();
    loop {
        match assoc.receive().await {
            Ok(Pdu::PData { data }) => {
                for pdv in data {
                    if pdv.value_type != PDataValueType::Command {
                        return Err(Error::Protocol("data set where a response was due".into()));
                    }
                    if buf.len() + pdv.data.len() > MAX_RESPONSE_BYTES {
                        return Err(Error::Protocol("response command set too large".into()));
                    }
                    buf.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        let rsp =
                            Command::parse(&buf).map_err(|e| Error::Protocol(e.to_string()))?;
                        if rsp.field != field::N_EVENT_REPORT_RSP || rsp.message_id != message_id {
                            return Err(Error::Protocol(format!(
                                "unexpected answer 0x{:04X} to message {}",
                                rsp.field, rsp.message_id
                            )));
                        }
                        return match rsp.status {
                            Some(0) => Ok(()),
                            Some(code) => Err(Error::Status(code)),
                            None => Err(Error::Protocol("response without a status".into())),
                        };
                    }
                }
            }
            Ok(Pdu::AbortRQ { .. }) => return Err(Error::Receive("aborted by the peer".into())),
            Ok(other) => {
                return Err(Error::Protocol(format!(
                    "unexpected PDU while waiting for the answer: {other:?}"
                )));
            }
            Err(e) => return Err(Error::Receive(e.to_string())),
        }
    }
}
