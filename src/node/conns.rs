//! Every open peer connection of a node, so shutdown can break their blocking reads and
//! the status can list the peers.

use std::collections::HashMap;
use std::net::SocketAddr;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::session::SharedStream;

/// Every open peer connection, so shutdown can break their blocking reads.
#[derive(Debug, Default)]
pub(super) struct Conns {
    inner: Mutex<ConnTable>,
}

#[derive(Debug, Default)]
struct ConnTable {
    next: u64,
    closed: bool,
    open: HashMap<u64, SharedStream>,
}

impl Conns {
    /// Registers a connection until the guard drops.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] if the node is shutting down; the stream is then shut.
    pub(super) fn register(&self, stream: &SharedStream) -> Result<ConnGuard<'_>> {
        let mut table = self.inner.lock();
        if table.closed {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(Error::Shutdown);
        }
        let id = table.next;
        table.next += 1;
        table.open.insert(id, stream.clone());
        Ok(ConnGuard { conns: self, id })
    }

    /// Breaks connection `id`, if still open: its threads see it end and leave.
    pub(super) fn shut(&self, id: u64) {
        if let Some(stream) = self.inner.lock().open.get(&id) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// How many connections are open.
    pub(super) fn open(&self) -> usize {
        self.inner.lock().open.len()
    }

    /// The peers of the open connections, sorted, each once.
    pub(super) fn peers(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self
            .inner
            .lock()
            .open
            .values()
            .filter_map(|s| s.peer_addr().ok())
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    pub(super) fn close_all(&self) {
        let open = {
            let mut table = self.inner.lock();
            table.closed = true;
            std::mem::take(&mut table.open)
        };
        for stream in open.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Keeps a connection registered in [`Conns`] while alive.
pub(super) struct ConnGuard<'a> {
    conns: &'a Conns,
    id: u64,
}

impl ConnGuard<'_> {
    /// Returns the connection's id, unique within the node.
    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.conns.inner.lock().open.remove(&self.id);
    }
}
