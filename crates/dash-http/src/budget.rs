//! The in-flight body budget: bytes of webhook bodies being read or parsed at once, in KiB
//! permits. Past it a request gets 429. No one client address may hold more than a share of it
//! ([`PEER_SHARE`], and never less than one largest body), so a peer that opens many slow
//! uploads cannot take it all from the others. IPv6 clients count by their /64 (one host can
//! hold a whole /64). The client is the one [`Client`](crate::client::Client) resolves: behind
//! a web edge, the sender the edge names, never the edge; a request whose client is unknown is
//! bounded by the total only.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::client_key;

/// The part of the budget one client address may hold: half.
const PEER_SHARE: u32 = 2;

pub struct BodyBudget {
    total: Arc<Semaphore>,
    per_peer_max: u32,
    held: Mutex<HashMap<IpAddr, u32>>,
}

/// KiB of the budget held by one request; given back when dropped.
pub(crate) struct BodyPermit {
    _permit: OwnedSemaphorePermit,
    budget: Arc<BodyBudget>,
    peer: Option<IpAddr>,
    kib: u32,
}

impl BodyBudget {
    /// `kib` in all; `largest_kib` is what one request may need.
    pub(crate) fn new(kib: u32, largest_kib: u32) -> Arc<Self> {
        let kib = kib.max(1);
        let per_peer_max = (kib / PEER_SHARE).max(largest_kib).max(1);
        Arc::new(Self { total: Arc::new(Semaphore::new(kib as usize)), per_peer_max, held: Mutex::new(HashMap::new()) })
    }

    /// `kib` of the budget for a request from `peer`, or `None` when the budget, or the peer's
    /// share of it, is used up.
    pub(crate) fn try_take(self: &Arc<Self>, peer: Option<IpAddr>, kib: u32) -> Option<BodyPermit> {
        let peer = peer.map(client_key);
        if let Some(ip) = peer {
            let mut held = self.held.lock();
            let mine = held.entry(ip).or_default();
            if mine.saturating_add(kib) > self.per_peer_max {
                if *mine == 0 {
                    held.remove(&ip);
                }
                return None;
            }
            *mine += kib;
        }
        match self.total.clone().try_acquire_many_owned(kib) {
            Ok(permit) => Some(BodyPermit { _permit: permit, budget: self.clone(), peer, kib }),
            Err(_) => {
                if let Some(ip) = peer {
                    self.release(ip, kib);
                }
                None
            }
        }
    }

    fn release(&self, ip: IpAddr, kib: u32) {
        let mut held = self.held.lock();
        if let Some(mine) = held.get_mut(&ip) {
            *mine = mine.saturating_sub(kib);
            if *mine == 0 {
                held.remove(&ip);
            }
        }
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            self.budget.release(ip, self.kib);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_gets_half_and_others_keep_the_rest() {
        let budget = BodyBudget::new(100, 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = budget.try_take(Some(a), 40).unwrap();
        assert!(budget.try_take(Some(a), 11).is_none(), "past a's share");
        let second = budget.try_take(Some(a), 10).unwrap();
        let other = budget.try_take(Some(b), 50).unwrap();
        assert!(budget.try_take(Some(b), 1).is_none(), "the budget is spent");
        drop((first, second));
        assert!(budget.try_take(Some(a), 50).is_some(), "given back when dropped");
        drop(other);
        assert!(budget.held.lock().is_empty());
        assert!(budget.try_take(None, 100).is_some(), "no address: only the total bounds it");
    }

    #[test]
    fn a_share_fits_one_largest_body() {
        let budget = BodyBudget::new(100, 80);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(budget.try_take(Some(a), 80).is_some());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let budget = BodyBudget::new(100, 10);
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let other_in_same_64: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let _held = budget.try_take(Some(one), 50).unwrap();
        assert!(budget.try_take(Some(other_in_same_64), 1).is_none());
        assert!(budget.try_take(Some("2001:db8:0:1::1".parse().unwrap()), 1).is_some());
    }
}
