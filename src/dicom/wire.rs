//! Reading an association's PDUs: a P-DATA-TF, which carries every byte of
//! every data set, is cut into its PDVs in place, each a slice of the one
//! buffer the PDU was read into; any other PDU is parsed by dicom-ul.
//!
//! dicom-ul's reader copies every PDV into a new vector (and the PDU into
//! another before that): for a 512 KiB instance that was a tenth of the
//! gateway's CPU. This reads the same bytes from the same buffer
//! (`AsyncAssociation::get_mut`), with the same bounds: a PDU longer than
//! the maximum we announced is refused before anything of it is buffered,
//! so memory stays at one PDU whatever a length field claims.

use std::time::Duration;

use bytes::{Buf, Bytes};
use dicom_ul::association::AsyncAssociation;
use dicom_ul::association::server::AsyncServerAssociation;
use dicom_ul::pdu::Pdu;
use thiserror::Error;
use tokio::io::AsyncReadExt;

/// A PDU's type and length fields.
const PDU_HEADER: usize = 6;
const P_DATA_TF: u8 = 0x04;
/// A PDV item's length, presentation context and message control header.
const PDV_HEADER: usize = 6;

#[derive(Debug, Error)]
pub enum Error {
    #[error("peer silent past read_timeout")]
    Timeout,
    #[error("connection closed without release")]
    Closed,
    #[error("PDU of {len} bytes, above the maximum of {max} announced")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed P-DATA-TF: {0}")]
    Malformed(&'static str),
    #[error("reading a PDU: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading a PDU: {0}")]
    Pdu(#[from] dicom_ul::pdu::ReadError),
}

/// One presentation data value of a P-DATA-TF.
#[derive(Debug)]
pub struct Pdv {
    pub pc: u8,
    /// A command fragment (else a data set fragment).
    pub command: bool,
    /// The last fragment of its command or data set.
    pub last: bool,
    pub data: Bytes,
}

#[derive(Debug)]
pub enum Incoming {
    PData(Vec<Pdv>),
    Other(Pdu),
}

/// Reads the next PDU, which must arrive whole within `timeout` (as
/// dicom-ul's `receive`). `max_pdu` is the maximum length we announced.
pub async fn receive<S>(
    assoc: &mut AsyncServerAssociation<S>,
    max_pdu: u32,
    timeout: Duration,
) -> Result<Incoming, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    tokio::time::timeout(timeout, read(assoc, max_pdu))
        .await
        .map_err(|_| Error::Timeout)?
}

async fn read<S>(assoc: &mut AsyncServerAssociation<S>, max_pdu: u32) -> Result<Incoming, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (socket, buf) = AsyncAssociation::get_mut(assoc);
    loop {
        if let Some(len) = buf.get(2..PDU_HEADER) {
            let len = u32::from_be_bytes(len.try_into().expect("four bytes"));
            if len > max_pdu {
                return Err(Error::TooLarge { len, max: max_pdu });
            }
            // At most PDU_HEADER + max_pdu, which fits any usize we run on.
            let total = PDU_HEADER + len as usize;
            if buf.len() >= total {
                return parse(buf.split_to(total).freeze(), max_pdu);
            }
            buf.reserve(total - buf.len());
        }
        if socket.read_buf(buf).await? == 0 {
            return Err(Error::Closed);
        }
    }
}

/// A whole PDU, header included.
fn parse(mut pdu: Bytes, max_pdu: u32) -> Result<Incoming, Error> {
    if pdu[0] != P_DATA_TF {
        return match dicom_ul::pdu::read_pdu(&pdu[..], max_pdu, true)? {
            Some(other) => Ok(Incoming::Other(other)),
            None => Err(Error::Malformed("cut short")),
        };
    }
    pdu.advance(PDU_HEADER);
    // Senders put one PDV in a PDU, or a command's two.
    let mut pdvs = Vec::with_capacity(1);
    while pdu.has_remaining() {
        if pdu.len() < PDV_HEADER {
            return Err(Error::Malformed("a PDV item header cut short"));
        }
        let len = pdu.get_u32() as usize;
        if len < 2 {
            return Err(Error::Malformed("a PDV item shorter than its header"));
        }
        if len > pdu.len() {
            return Err(Error::Malformed("a PDV item longer than its PDU"));
        }
        let pc = pdu.get_u8();
        let control = pdu.get_u8();
        pdvs.push(Pdv {
            pc,
            command: control & 0x01 != 0,
            last: control & 0x02 != 0,
            data: pdu.split_to(len - 2),
        });
    }
    Ok(Incoming::PData(pdvs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(kind: u8, body: &[u8]) -> Bytes {
        let mut out = vec![kind, 0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out.into()
    }

    fn item(pc: u8, control: u8, data: &[u8]) -> Vec<u8> {
        let mut out = ((data.len() + 2) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&[pc, control]);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn p_data_is_cut_into_its_pdvs() {
        let body = [
            item(1, 0x03, b"cmd"),
            item(3, 0x00, b""),
            item(5, 0x02, b"data"),
        ]
        .concat();
        let Incoming::PData(pdvs) = parse(pdu(P_DATA_TF, &body), 16384).unwrap() else {
            panic!("not P-DATA");
        };
        let seen: Vec<_> = pdvs
            .iter()
            .map(|p| (p.pc, p.command, p.last, &p.data[..]))
            .collect();
        assert_eq!(
            seen,
            [
                (1, true, true, &b"cmd"[..]),
                (3, false, false, &b""[..]),
                (5, false, true, &b"data"[..])
            ]
        );
    }

    #[test]
    fn malformed_p_data_is_refused() {
        let mut long = item(1, 0, b"abc");
        long[3] = 9; // claims more than the PDU holds
        for (body, why) in [
            (vec![0, 0, 0], "cut short"),
            (vec![0, 0, 0, 1, 1], "cut short"),
            (vec![0, 0, 0, 1, 1, 0], "shorter than its header"),
            (long, "longer than its PDU"),
        ] {
            let e = parse(pdu(P_DATA_TF, &body), 16384).unwrap_err();
            assert!(e.to_string().contains(why), "{body:?}: {e}");
        }
    }

    #[test]
    fn other_pdus_go_to_dicom_ul() {
        let release = parse(pdu(0x05, &[0; 4]), 16384).unwrap();
        assert!(
            matches!(release, Incoming::Other(Pdu::ReleaseRQ)),
            "{release:?}"
        );
    }
}
