//! Connections that have not associated yet.
//!
//! A socket costs nothing to open and, until its A-ASSOCIATE-RQ is complete,
//! says nothing about who is calling. So such connections are kept apart from
//! the association slots: they are counted on their own, the oldest is closed
//! when the count is full (a modality that just connected is never the one
//! sacrificed to sockets left idle), and each gets the ARTIM time (PS3.8
//! §9.1.5) to deliver its whole request before it is closed. Only a complete
//! request takes an association slot.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// PDU type of an A-ASSOCIATE-RQ.
const ASSOCIATE_RQ: u8 = 0x01;
/// PDU header: type, reserved, 4-byte big-endian length.
const PDU_HEADER: usize = 6;
/// Bytes of a request waited for before it is handed to the association
/// layer even if it is longer: a peer that sent this much is talking, and a
/// socket's receive window may not hold more until someone reads it.
const ENOUGH_OF_A_REQUEST: usize = 32 * 1024;
/// How often a partial request is looked at again.
const POLL: Duration = Duration::from_millis(5);

/// The connections waiting for their request, oldest first.
#[derive(Debug)]
pub struct PendingSet {
    cap: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Oldest first.
    waiting: BTreeMap<u64, (IpAddr, CancellationToken)>,
}

/// A place in the set; dropping it leaves the set. `evicted` fires when a
/// newer connection needed the place.
#[derive(Debug)]
pub struct Pending {
    set: Arc<PendingSet>,
    id: u64,
    pub evicted: CancellationToken,
}

impl PendingSet {
    pub fn new(cap: usize) -> Arc<PendingSet> {
        Arc::new(PendingSet {
            cap: cap.max(1),
            state: Mutex::default(),
        })
    }

    /// Admits a new connection from `peer`. When the set is full, the
    /// oldest connection of the address holding the most places is closed:
    /// a flood from one host makes room from its own connections, not from
    /// a modality's. Returns whether one was evicted, for the log.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> (Pending, bool) {
        let mut state = self.state.lock().expect("pending set");
        let mut evicted = false;
        while state.waiting.len() >= self.cap {
            let mut held: HashMap<IpAddr, usize> = HashMap::new();
            for (ip, _) in state.waiting.values() {
                *held.entry(*ip).or_default() += 1;
            }
            let greediest = held.into_iter().max_by_key(|(_, n)| *n).map(|(ip, _)| ip);
            let victim = state
                .waiting
                .iter()
                .find(|(_, (ip, _))| Some(*ip) == greediest)
                .map(|(id, _)| *id);
            let Some((_, token)) = victim.and_then(|id| state.waiting.remove(&id)) else {
                break;
            };
            token.cancel();
            evicted = true;
        }
        let id = state.next;
        state.next += 1;
        let token = CancellationToken::new();
        state.waiting.insert(id, (peer, token.clone()));
        let pending = Pending {
            set: Arc::clone(self),
            id,
            evicted: token,
        };
        (pending, evicted)
    }

    pub fn len(&self) -> usize {
        self.state.lock().expect("pending set").waiting.len()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.set
            .state
            .lock()
            .expect("pending set")
            .waiting
            .remove(&self.id);
    }
}

/// Why a connection was closed before it associated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no complete A-ASSOCIATE-RQ within the ARTIM time ({0:?})")]
    Artim(Duration),
    #[error("closed by the peer before a complete A-ASSOCIATE-RQ")]
    Closed,
    #[error("closed to make room for a newer connection")]
    Evicted,
    #[error("first PDU (type 0x{0:02X}) is not an A-ASSOCIATE-RQ")]
    NotARequest(u8),
    #[error("reading the A-ASSOCIATE-RQ: {0}")]
    Io(#[from] std::io::Error),
}

/// Waits, without consuming anything, until `socket` holds a complete
/// A-ASSOCIATE-RQ (or enough of a long one), for at most `artim`. Any other
/// first PDU closes the connection (PS3.8 state Sta2 answers it with an
/// A-ABORT). The association layer then reads the request within what is
/// left of the ARTIM time, so no part of the handshake can hold a slot for
/// longer.
pub async fn request_arrived(
    socket: &TcpStream,
    artim: Duration,
    evicted: &CancellationToken,
) -> Result<(), Error> {
    let wait = async {
        let mut buf = vec![0u8; PDU_HEADER];
        let mut seen = 0;
        loop {
            let n = socket.peek(&mut buf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            if n >= PDU_HEADER {
                if buf[0] != ASSOCIATE_RQ {
                    return Err(Error::NotARequest(buf[0]));
                }
                let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
                let need = PDU_HEADER
                    .saturating_add(len)
                    .min(PDU_HEADER + ENOUGH_OF_A_REQUEST);
                if n >= need {
                    return Ok(());
                }
                if buf.len() < need {
                    buf.resize(need, 0);
                    continue;
                }
            }
            if n == seen {
                // peek answers at once while any byte is queued: look again
                // a little later rather than spin.
                tokio::time::sleep(POLL).await;
            }
            seen = n;
        }
    };
    tokio::select! {
        result = tokio::time::timeout(artim, wait) => result.unwrap_or(Err(Error::Artim(artim))),
        () = evicted.cancelled() => Err(Error::Evicted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let set = PendingSet::new(2);
        let ip = |last| IpAddr::from([127, 0, 0, last]);
        let (a, evicted) = set.admit(ip(1));
        assert!(!evicted);
        let (b, _) = set.admit(ip(1));
        let (c, evicted) = set.admit(ip(1));
        assert!(evicted);
        assert!(a.evicted.is_cancelled());
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!(set.len(), 2);
        drop((a, b));
        assert_eq!(set.len(), 1);
        drop(c);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_flood_from_one_host_makes_room_from_its_own_connections() {
        let set = PendingSet::new(3);
        let ip = |last| IpAddr::from([127, 0, 0, last]);
        let (modality, _) = set.admit(ip(9));
        let flood: Vec<_> = (0..10).map(|_| set.admit(ip(66)).0).collect();
        assert!(!modality.evicted.is_cancelled());
        assert_eq!(
            flood.iter().filter(|p| !p.evicted.is_cancelled()).count(),
            2
        );
        assert_eq!(set.len(), 3);
    }

    #[tokio::test]
    async fn a_request_is_awaited_whole_and_a_silent_socket_times_out() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let never = CancellationToken::new();

        // Nothing sent: the ARTIM timer closes it.
        let silent = request_arrived(&server, Duration::from_millis(50), &never).await;
        assert!(matches!(silent, Err(Error::Artim(_))), "{silent:?}");

        // Half a request, then the rest.
        let mut rq = vec![ASSOCIATE_RQ, 0, 0, 0, 0, 10];
        rq.extend_from_slice(&[7; 10]);
        client.write_all(&rq[..8]).await.unwrap();
        let half = request_arrived(&server, Duration::from_millis(50), &never).await;
        assert!(matches!(half, Err(Error::Artim(_))), "{half:?}");
        client.write_all(&rq[8..]).await.unwrap();
        request_arrived(&server, Duration::from_secs(30), &never)
            .await
            .unwrap();

        // Evicted while waiting.
        let evicted = CancellationToken::new();
        evicted.cancel();
        let (_c2, server2) = (
            TcpStream::connect(addr).await.unwrap(),
            listener.accept().await.unwrap().0,
        );
        let gone = request_arrived(&server2, Duration::from_secs(30), &evicted).await;
        assert!(matches!(gone, Err(Error::Evicted)), "{gone:?}");
    }
}
