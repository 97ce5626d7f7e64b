//! Who may hold a connection to the health port. The port is the load balancer's, but an app
//! container reaches it too (the bridge's gateway), and so does anything else in the VPC: one
//! client opening connections and sending nothing could otherwise hold every slot (and every
//! descriptor) until the load balancer's checks time out and the group replaces a healthy
//! instance. So each source address holds at most a few connections at once, all of them
//! together at most a few hundred, and a connection over either is closed at once. The load
//! balancer's checkers each come from an address of their own and hold one or two.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections one source address may hold at once.
pub const PER_PEER: usize = 16;
/// Connections all sources together may hold at once.
pub const TOTAL: usize = 512;

/// The connections held now, by source address.
#[derive(Debug, Clone)]
pub struct Admission {
    held: Arc<Mutex<Held>>,
    per_peer: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct Held {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
    /// Connections closed at once since the start, for /metrics.
    refused: u64,
}

/// One admitted connection; its slot frees when it drops.
#[derive(Debug)]
pub struct Ticket {
    held: Arc<Mutex<Held>>,
    peer: IpAddr,
}

impl Admission {
    pub fn new(per_peer: usize, total: usize) -> Admission {
        Admission {
            held: Arc::default(),
            per_peer,
            total,
        }
    }

    /// A ticket for a connection from `peer`, or None when it or everyone holds too many.
    pub fn admit(&self, peer: IpAddr) -> Option<Ticket> {
        let peer = peer.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let of_peer = held.by_peer.get(&peer).copied().unwrap_or(0);
        if of_peer >= self.per_peer || held.total >= self.total {
            held.refused += 1;
            return None;
        }
        held.by_peer.insert(peer, of_peer + 1);
        held.total += 1;
        Some(Ticket {
            held: self.held.clone(),
            peer,
        })
    }

    /// Connections held now, and closed at once since the start.
    pub fn counts(&self) -> (usize, u64) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        (held.total, held.refused)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Whether `peer` is this host itself: /status and /metrics answer only there.
pub fn is_local(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_the_slots_of_another() {
        let a = Admission::new(2, 3);
        let (x, y, z) = (
            IpAddr::from([172, 17, 0, 2]),
            IpAddr::from([10, 0, 0, 5]),
            IpAddr::from([10, 0, 1, 5]),
        );
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert!(a.admit(x).is_none(), "a third from one source");
        // The same source written as an IPv4-mapped IPv6 address is the same source.
        assert!(a.admit("::ffff:172.17.0.2".parse().unwrap()).is_none());
        let _y1 = a.admit(y).unwrap();
        assert!(a.admit(z).is_none(), "over the total");
        assert_eq!(a.counts(), (3, 3));
        drop(x1);
        assert!(a.admit(z).is_some(), "a slot freed");
        assert_eq!(
            a.held.lock().unwrap().by_peer.get(&z),
            None,
            "dropped again"
        );
        assert_eq!(a.counts().0, 2);
    }

    #[test]
    fn only_this_host_is_local() {
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for other in [
            "172.17.0.1",
            "10.0.0.5",
            "0.0.0.0",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(!is_local(other.parse().unwrap()), "{other}");
        }
    }
}
