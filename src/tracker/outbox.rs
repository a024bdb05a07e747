//! Replies sent in bursts: a serving thread answers every request already queued on its
//! socket (up to [`BATCH`]), then sends all the replies with one `sendmmsg(2)`, so the
//! kernel is entered once per burst and each asker is woken once, not once per reply.
//! Measured with `cargo bench --bench tracker`: about 1.4 times the requests per tracker
//! CPU-second of one `send_to` per reply (BENCHMARKS.md).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

use super::wire::ReplyBuf;

/// Most requests a serving thread takes off its socket before it sends their replies.
pub(crate) const BATCH: usize = 32;

/// A serving thread's reply buffers, and the headers `sendmmsg` reads, all kept from one
/// burst to the next: sending allocates nothing.
pub(crate) struct Outbox {
    /// One buffer per request of a burst.
    pub replies: Vec<ReplyBuf>,
    addrs: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Outbox {
    /// Buffers for a burst of [`BATCH`] replies.
    pub fn new() -> Self {
        Self {
            replies: (0..BATCH).map(|_| ReplyBuf::new()).collect(),
            addrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
        }
    }

    /// Sends the replies ready in the first `used` buffers on `socket`, and clears them.
    /// Returns how many were sent. A reply the kernel refuses (an ICMP error left by an
    /// earlier one, a signal) is dropped and the rest are still sent; the node asks again.
    pub fn flush(&mut self, socket: &UdpSocket, used: usize) -> usize {
        self.addrs.clear();
        self.iovs.clear();
        self.msgs.clear();
        for reply in &mut self.replies[..used.min(BATCH)] {
            if let Some((bytes, to)) = reply.take_ready() {
                self.addrs.push(SockAddr::from(to));
                self.iovs.push(libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                });
            }
        }
        for (iov, addr) in self.iovs.iter_mut().zip(&self.addrs) {
            // SAFETY: `msghdr` is plain data; all zeroes is a valid empty header.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addr.as_ptr().cast_mut().cast();
            hdr.msg_namelen = addr.len();
            hdr.msg_iov = std::ptr::from_mut(iov);
            hdr.msg_iovlen = 1;
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let mut sent = 0;
        let mut next = 0;
        while next < self.msgs.len() {
            let rest = &mut self.msgs[next..];
            let count = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            // SAFETY: every header points at an address and an iovec in `self.addrs` and
            // `self.iovs`, and every iovec at a reply in `self.replies`; none of them moves
            // or is dropped before the call returns, and the kernel only reads them.
            let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), rest.as_mut_ptr(), count, 0) };
            match usize::try_from(n) {
                Ok(n) if n > 0 => {
                    sent += n;
                    next += n;
                }
                // The first reply left failed: drop it, send the others.
                _ => next += 1,
            }
        }
        sent
    }
}

/// Where a reply goes, as `ReplyBuf::take_ready` returns it.
pub(crate) type Ready<'a> = (&'a [u8], SocketAddr);
