//! A bounded count per client: how many of something (connections, `/live` sessions) each
//! client holds at once, by [`client_key`] (an address; IPv6 by its /64). A [`ClientPlace`] is
//! one of them, given back when dropped.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::client::client_key;

pub(crate) struct ClientCounts {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One place in a client's count.
pub(crate) struct ClientPlace {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl ClientCounts {
    /// At most `max` (at least 1) places per client.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), open: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// One more place for `client`, or `None` once it holds `max`.
    pub(crate) fn take(self: &Arc<Self>, client: IpAddr) -> Option<ClientPlace> {
        let client = client_key(client);
        let mut open = self.open.lock();
        let count = open.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientPlace { counts: self.clone(), client })
    }
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock();
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_share_by_address_or_64_and_gets_it_back() {
        let counts = ClientCounts::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = counts.take(a).unwrap();
        let _second = counts.take(a).unwrap();
        assert!(counts.take(a).is_none(), "past its share");
        assert!(counts.take("10.0.0.2".parse().unwrap()).is_some(), "another client");
        let _v6 = counts.take("2001:db8::1".parse().unwrap()).unwrap();
        let _same_64 = counts.take("2001:db8::2".parse().unwrap()).unwrap();
        assert!(counts.take("2001:db8::3".parse().unwrap()).is_none(), "one /64 is one client");
        drop(first);
        assert!(counts.take(a).is_some(), "given back when dropped");
        assert!(counts.open.lock().len() <= 3, "emptied counts are forgotten");
    }
}
