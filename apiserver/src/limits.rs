//! How many connections each client address holds open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address; cheap to clone.
#[derive(Clone)]
pub struct Connections {
    /// A std mutex: nothing awaits while holding it.
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_client: usize,
}

/// One admitted connection; its slot is freed on drop.
pub struct Slot {
    connections: Connections,
    client: IpAddr,
}

impl Connections {
    pub fn new(per_client: usize) -> Connections {
        Connections {
            open: Arc::default(),
            per_client,
        }
    }

    /// A slot for a new connection from `client`, unless it holds its
    /// share already.
    pub fn admit(&self, client: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().expect("not poisoned");
        let n = open.entry(client).or_default();
        if *n >= self.per_client {
            return None;
        }
        *n += 1;
        Some(Slot {
            connections: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_share() {
        let connections = Connections::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = connections.admit(a).unwrap();
        let _second = connections.admit(a).unwrap();
        assert!(connections.admit(a).is_none());
        assert!(connections.admit(b).is_some());
        drop(first);
        assert!(connections.admit(a).is_some());
    }
}
