//! Requests taken and replies sent in bursts: a serving thread takes every request already
//! queued on its socket (up to [`BATCH`]) with one `recvmmsg(2)`, answers each into a
//! buffer of its own, then sends all the replies with one `sendmmsg(2)`. The kernel is
//! entered twice per burst rather than twice per request, and each asker is woken once.
//! Measured with `cargo bench --bench tracker` (BENCHMARKS.md): the send bursts about 1.2-1.4
//! times the requests per tracker CPU-second of one `send_to` per reply; the receive bursts
//! on top of them are in the thirteenth session's table.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{SockAddr, SockAddrStorage};

use super::wire::ReplyBuf;

/// Largest request a serving thread reads. Every request a node sends is far smaller (an
/// announce with the longest names allowed is under 500 bytes, sealed), and a search
/// pattern longer than the longest file name matches nothing; a larger datagram arrives
/// cut short and is counted as malformed, unanswered.
pub(crate) const MAX_REQUEST_LEN: usize = 2048;

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

/// A serving thread's receive buffers and the headers `recvmmsg` fills, kept from one burst
/// to the next: receiving allocates nothing.
pub(crate) struct Inbox {
    /// [`BATCH`] buffers of [`MAX_REQUEST_LEN`] bytes, end to end.
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// How many the last `receive` took.
    taken: usize,
}

/// One datagram of a burst, as [`Inbox::datagram`] gives it.
pub(crate) enum Received<'a> {
    /// A request and where it came from.
    Request(&'a mut [u8], SocketAddr),
    /// A datagram over [`MAX_REQUEST_LEN`], cut short: no request of a node's.
    TooLarge(SocketAddr),
    /// Nothing, with no source: what a socket shut for reading (by `close`) gives.
    Nothing,
}

impl Inbox {
    /// Buffers for a burst of [`BATCH`] requests.
    pub fn new() -> Self {
        Self {
            bufs: vec![0; BATCH * MAX_REQUEST_LEN],
            // SAFETY: `sockaddr_storage` is plain data; all zeroes is a valid empty address.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
            taken: 0,
        }
    }

    /// Waits for a datagram on `socket` (as long as its read timeout allows), then takes
    /// what else is queued already, up to [`BATCH`] in all; returns how many.
    ///
    /// # Errors
    ///
    /// What the receive fails with: `WouldBlock` or `TimedOut` when the read timeout
    /// passed with nothing, an ICMP error left by an earlier reply, an interrupt.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.taken = 0;
        self.iovs.clear();
        self.msgs.clear();
        for buf in self.bufs.chunks_exact_mut(MAX_REQUEST_LEN) {
            self.iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            });
        }
        for (iov, addr) in self.iovs.iter_mut().zip(&mut self.addrs) {
            // A receive that finds no datagram (a socket shut for reading) writes no
            // address: left unset, it reads as none rather than the last burst's.
            addr.ss_family = 0;
            // SAFETY: `msghdr` is plain data; all zeroes is a valid empty header.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = std::ptr::from_mut(addr).cast();
            hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
            hdr.msg_iov = std::ptr::from_mut(iov);
            hdr.msg_iovlen = 1;
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let count = u32::try_from(self.msgs.len()).unwrap_or(u32::MAX);
        // SAFETY: every header points at an address in `self.addrs` and an iovec in
        // `self.iovs`, and every iovec at its own `MAX_REQUEST_LEN` bytes of `self.bufs`;
        // none moves or is dropped before the call returns. The kernel writes at most
        // `msg_namelen` bytes of address and `iov_len` bytes of datagram into each.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                count,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        self.taken = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        Ok(self.taken)
    }

    /// The `i`-th datagram the last [`receive`](Self::receive) took.
    pub fn datagram(&mut self, i: usize) -> Received<'_> {
        let (Some(msg), Some(addr)) = (self.msgs.get(i), self.addrs.get(i)) else {
            return Received::Nothing;
        };
        if i >= self.taken {
            return Received::Nothing;
        }
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: `sockaddr_storage` is one of this platform's `sockaddr_*` types, and
        // `view_as` checks it fits; the kernel wrote `msg_namelen` bytes of it.
        unsafe { *storage.view_as::<libc::sockaddr_storage>() = *addr };
        let len = msg
            .msg_hdr
            .msg_namelen
            .min(socklen_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` holds an address of `len` bytes, as `SockAddr::new` asks.
        let Some(from) = (unsafe { SockAddr::new(storage, len) }).as_socket() else {
            return Received::Nothing;
        };
        if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Received::TooLarge(from);
        }
        let len = (msg.msg_len as usize).min(MAX_REQUEST_LEN);
        let start = i * MAX_REQUEST_LEN;
        Received::Request(&mut self.bufs[start..start + len], from)
    }
}

/// The size of `T`, as the socket calls take it.
fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Where a reply goes, as `ReplyBuf::take_ready` returns it.
pub(crate) type Ready<'a> = (&'a [u8], SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst takes every datagram queued, each with its source: one over
    /// [`MAX_REQUEST_LEN`] is marked too large, not handed over cut short; a socket shut
    /// for reading gives nothing with no source.
    #[test]
    fn a_burst_takes_what_is_queued_and_marks_what_is_too_large() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        a.send_to(&[1; MAX_REQUEST_LEN + 1], to).unwrap();
        b.send_to(b"need f.bin", to).unwrap();
        a.send_to(&[7; MAX_REQUEST_LEN], to).unwrap();
        let mut inbox = Inbox::new();
        assert_eq!(inbox.receive(&socket).unwrap(), 3);
        let from_a = a.local_addr().unwrap();
        assert!(matches!(inbox.datagram(0), Received::TooLarge(f) if f == from_a));
        match inbox.datagram(1) {
            Received::Request(bytes, from) => {
                assert_eq!(
                    (&*bytes, from),
                    (&b"need f.bin"[..], b.local_addr().unwrap())
                );
            }
            _ => panic!("the second datagram is a request"),
        }
        match inbox.datagram(2) {
            Received::Request(bytes, from) => {
                assert_eq!(bytes.len(), MAX_REQUEST_LEN);
                assert_eq!(from, from_a);
            }
            _ => panic!("a datagram of exactly the largest size is taken whole"),
        }
        assert!(matches!(inbox.datagram(3), Received::Nothing));
        // As `close` does: on an unconnected socket Linux says "not connected" but shuts
        // it for reading all the same.
        let _ = socket2::SockRef::from(&socket).shutdown(std::net::Shutdown::Read);
        let taken = inbox.receive(&socket).unwrap();
        assert!(taken >= 1);
        assert!((0..taken).all(|i| matches!(inbox.datagram(i), Received::Nothing)));
    }
}
