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
use tokio::net::TcpStream;

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
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + OverTcp + Unpin + Send,
{
    tokio::time::timeout(timeout, read(assoc, max_pdu))
        .await
        .map_err(|_| Error::Timeout)?
}

async fn read<S>(assoc: &mut AsyncServerAssociation<S>, max_pdu: u32) -> Result<Incoming, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + OverTcp + Unpin + Send,
{
    let (socket, buf) = AsyncAssociation::get_mut(assoc);
    loop {
        quick_ack(socket.tcp());
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

/// The TCP connection under an association's stream (plain or TLS).
pub trait OverTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Has the kernel acknowledge what arrives at once (Linux `TCP_QUICKACK`),
/// before each read. A sender that leaves Nagle's algorithm on (Debian's
/// DCMTK without `TCP_NODELAY=1`, many modalities' stacks) writes a
/// command and holds the data set that follows until the command is
/// acknowledged; a receiver that has just answered is in the kernel's
/// interactive mode and delays that acknowledgement up to 40 ms, hoping
/// to carry it on an answer it has none to give yet. Every C-STORE then
/// waited 40 ms (5000 small instances: 23 instead of 1,500 per second;
/// BENCHMARKS.md, "Senders with Nagle's algorithm on"). The mode is not
/// sticky (the next answer re-enters it), hence before every read. A
/// failure is harmless: only slower.
fn quick_ack(tcp: &TcpStream) {
    let _ = set_quick_ack(tcp, true);
}

/// Sets `TCP_QUICKACK` (Linux; elsewhere nothing).
fn set_quick_ack(tcp: &TcpStream, on: bool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::from(on);
        // SAFETY: a valid socket descriptor (borrowed from the open
        // stream) and a pointer to a c_int of the length given.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, on);
    Ok(())
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

    /// Linux reports `TCP_QUICKACK` as "not in interactive (delayed ACK)
    /// mode".
    #[cfg(target_os = "linux")]
    fn acks_at_once(tcp: &TcpStream) -> bool {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, a c_int and its length.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                std::ptr::from_mut(&mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value != 0
    }

    /// A connection in delayed-ACK mode (as after an answer) leaves it
    /// before a read, so a sender holding its data set behind Nagle's
    /// algorithm is not kept waiting.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_read_acknowledges_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        set_quick_ack(&server, false).unwrap();
        assert!(!acks_at_once(&server), "delayed-ACK mode to begin with");
        quick_ack(server.tcp());
        assert!(acks_at_once(&server));
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
