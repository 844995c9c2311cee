//! Idle and unwanted connections cannot lock a modality out of the DICOM
//! port: connections that have not associated are counted apart from the
//! association slots, closed after the ARTIM time, and the oldest makes room
//! for a new one; `allowed_peers` is checked before anything is held.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{self, Gateway, Opts};

/// Peak RSS the gateway may reach under these attacks.
const RSS_BOUND: u64 = 256 << 20;

fn idle_connections(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(to).expect("connect"))
        .collect()
}

fn store_one(gw: &Gateway) {
    let f = common::fixture("study1/");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    let out = common::storescu(gw, &common::storescu_flags(&f), &[&path]);
    common::assert_ok(&out, "storescu while idle connections are held");
}

/// Whether the gateway closed `conn` (EOF or reset) before `bound` passed.
/// `bound` only keeps a broken gateway from hanging the test.
fn closed_by_gateway(conn: &mut TcpStream, bound: Duration) -> bool {
    conn.set_read_timeout(Some(bound)).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn three_hundred_idle_sockets_do_not_lock_out_a_modality() {
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--max-associations")
            .arg("4")
            .arg("--max-pending-connections")
            .arg("64"),
    );
    let mut idle = idle_connections(gw.dicom, 300);
    // Every one of them is past the association limit many times over;
    // a modality still gets through, more than once.
    let echo = common::echoscu(&gw, "DICOMGW");
    common::assert_ok(&echo, "echoscu while 300 idle connections are open");
    store_one(&gw);
    gw.wait_for_log("max_pending_connections reached");
    // The oldest idle ones were closed to make room.
    assert!(closed_by_gateway(&mut idle[0], Duration::from_secs(30)));
    assert!(gw.peak_rss() < RSS_BOUND, "peak RSS {}", gw.peak_rss());
}

#[test]
fn a_connection_without_a_request_is_closed_after_the_artim_time() {
    let gw = Gateway::start_with(Opts::default().arg("--artim-timeout").arg("1"));
    let mut silent = TcpStream::connect(gw.dicom).unwrap();
    // Half an A-ASSOCIATE-RQ header, then nothing.
    let mut partial = TcpStream::connect(gw.dicom).unwrap();
    partial.write_all(&[0x01, 0x00, 0x00, 0x00]).unwrap();
    assert!(closed_by_gateway(&mut silent, Duration::from_secs(30)));
    assert!(closed_by_gateway(&mut partial, Duration::from_secs(30)));
    gw.wait_for_log("no complete A-ASSOCIATE-RQ within the ARTIM time");
    store_one(&gw);
}

#[test]
fn peers_outside_allowed_peers_hold_no_slot() {
    // Only 127.0.0.1 may send; a flood from 127.0.0.2 (also loopback) must
    // not take the one association slot.
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--max-associations")
            .arg("1")
            .arg("--allowed-peers")
            .arg("127.0.0.1"),
    );
    let stranger: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let strangers: Vec<TcpStream> = (0..50).map(|_| connect_from(stranger, gw.dicom)).collect();
    store_one(&gw);
    // A stranger that sends a request is refused with A-ASSOCIATE-RJ
    // (PDU type 3), permanently (result 1).
    let mut asking = connect_from(stranger, gw.dicom);
    asking.write_all(&associate_rq()).unwrap();
    asking
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rj = [0u8; 10];
    asking.read_exact(&mut rj).unwrap();
    assert_eq!((rj[0], rj[7]), (0x03, 0x01), "{rj:?}");
    gw.wait_for_log("not in allowed_peers");
    drop(strangers);
    store_one(&gw);
}

/// An A-ASSOCIATE-RQ for Verification, as bytes.
fn associate_rq() -> Vec<u8> {
    use dicom_ul::pdu::{AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem};
    let rq = AssociationRQ {
        protocol_version: 1,
        calling_ae_title: "STRANGER".into(),
        called_ae_title: "DICOMGW".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.1.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    };
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, &Pdu::AssociationRQ(rq)).unwrap();
    out
}

/// A TCP connection to `to` from the local address `local` (on Linux every
/// 127/8 address is there without configuration).
fn connect_from(local: SocketAddr, to: SocketAddr) -> TcpStream {
    // std has no bind-before-connect; tokio's TcpSocket has.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(local).unwrap();
        let stream = sock.connect(to).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

#[test]
fn a_first_pdu_that_is_not_a_request_or_a_request_that_never_ends_holds_nothing() {
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--max-associations")
            .arg("1")
            .arg("--artim-timeout")
            .arg("1"),
    );
    // A P-DATA-TF header as the first PDU: closed at once.
    let mut not_rq = TcpStream::connect(gw.dicom).unwrap();
    not_rq.write_all(&[0x04, 0, 0, 0, 0x10, 0]).unwrap();
    assert!(closed_by_gateway(&mut not_rq, Duration::from_secs(30)));
    gw.wait_for_log("is not an A-ASSOCIATE-RQ");
    // An A-ASSOCIATE-RQ that claims 64 KiB, sends 40 KiB and stops: it may
    // reach the association layer (a long request is handed on once 32 KiB
    // are in), which then has only what is left of the ARTIM time.
    let mut endless = TcpStream::connect(gw.dicom).unwrap();
    endless.write_all(&[0x01, 0, 0, 1, 0, 0]).unwrap();
    endless.write_all(&[0u8; 40 * 1024]).unwrap();
    assert!(closed_by_gateway(&mut endless, Duration::from_secs(30)));
    // The slot it may have held is free again.
    store_one(&gw);
}

/// A peer that associates and then trickles a data set cannot hold its slot
/// and a spool file for ever: once the data set has taken longer than
/// `read_timeout`, it must average `min_data_rate`.
#[test]
fn a_data_set_trickled_below_min_data_rate_is_aborted() {
    use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
    use dicom_ul::pdu::PDataValueType::{Command, Data};
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--max-associations")
            .arg("1")
            .arg("--read-timeout")
            .arg("1")
            .arg("--min-data-rate")
            .arg("100000"),
    );
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let (_, cmd) = scu.command(0x0001, CT_IMAGE_STORAGE, "1.2.3.4.5", true);
    let pdv = scu.pdv(Command, true, &cmd);
    scu.send(vec![pdv]);
    // The attack itself: 16 bytes every 200 ms, well under 100 kB/s. Each
    // PDU comes before read_timeout, so only the rate can end it.
    let mut aborted = false;
    for _ in 0..50 {
        let chunk = scu.pdv(Data, false, &[0u8; 16]);
        if !scu.try_send(vec![chunk]) {
            aborted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        aborted,
        "a trickling data set was still accepted after 10 s"
    );
    gw.wait_for_log("data set arriving slower than min_data_rate");
    // The slot is free.
    store_one(&gw);
}

/// An associated connection (A-ASSOCIATE-AC read).
fn associated(gw: &Gateway) -> TcpStream {
    let mut conn = TcpStream::connect(gw.dicom).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(&associate_rq()).unwrap();
    let mut head = [0u8; 6];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x02, "not an A-ASSOCIATE-AC: {head:?}");
    let len = u32::from_be_bytes(head[2..6].try_into().unwrap());
    let mut body = vec![0u8; len as usize];
    conn.read_exact(&mut body).unwrap();
    conn
}

/// Whether the gateway answers `conn` with an A-ABORT and closes it.
fn aborted(conn: &mut TcpStream) -> bool {
    let mut head = [0u8; 10];
    conn.read_exact(&mut head).is_ok()
        && head[0] == 0x07
        && closed_by_gateway(conn, Duration::from_secs(30))
}

/// After association, P-DATA-TF PDUs are read by the gateway's own reader
/// (src/dicom/wire.rs): a length field above the maximum it announced is
/// refused before anything of the PDU is buffered, malformed PDV items and
/// PDVs on a context never accepted end the association, and none of it
/// touches another association.
#[test]
fn hostile_p_data_after_association_is_aborted_in_bounded_memory() {
    let gw = Gateway::start();
    // Claims 4 GiB, then sends 8 MiB of it.
    let mut huge = associated(&gw);
    huge.write_all(&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xF0]).unwrap();
    // (The gateway may close with some of it unread: a reset, which may
    // also discard its A-ABORT on our side.)
    let _ = huge.write_all(&vec![0u8; 8 << 20]);
    if let Err(e) = huge.read_to_end(&mut Vec::new()) {
        use std::io::ErrorKind::{TimedOut, WouldBlock};
        assert!(
            !matches!(e.kind(), TimedOut | WouldBlock),
            "not closed: {e}"
        );
    }
    gw.wait_for_log("above the maximum of");
    // A PDV item of length 1 (shorter than its own header).
    let mut short = associated(&gw);
    short
        .write_all(&[0x04, 0, 0, 0, 0, 6, 0, 0, 0, 1, 1, 0])
        .unwrap();
    assert!(aborted(&mut short));
    gw.wait_for_log("malformed P-DATA-TF: a PDV item shorter than its header");
    // A PDV item longer than its PDU.
    let mut long = associated(&gw);
    long.write_all(&[0x04, 0, 0, 0, 0, 8, 0, 0, 0, 9, 1, 3, 0, 0])
        .unwrap();
    assert!(aborted(&mut long));
    gw.wait_for_log("malformed P-DATA-TF: a PDV item longer than its PDU");
    // A command fragment on presentation context 3, which was never proposed.
    let mut stranger = associated(&gw);
    stranger
        .write_all(&[0x04, 0, 0, 0, 0, 7, 0, 0, 0, 3, 3, 3, 0])
        .unwrap();
    assert!(aborted(&mut stranger));
    gw.wait_for_log("PDV on presentation context 3 which was not accepted");
    store_one(&gw);
    assert!(gw.peak_rss() < RSS_BOUND, "peak RSS {}", gw.peak_rss());
}
