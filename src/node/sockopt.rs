//! Socket options the standard library does not set: how much a sending socket holds
//! unsent, and how much a receiving one gathers before it wakes its reader.
//!
//! Both exist to make a capped uplink cheap to serve and to read. A piece crossing a
//! 1 MiB/s link arrives a segment or two at a time; read as it lands, that is a wakeup per
//! segment on each side, and with a thousand such connections on one machine the wakeups,
//! not the bytes, were what kept two cores busy. This is the crate's one `unsafe` block.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Binds the node's listening socket; on the IPv6 wildcard (`[::]`) dual-stack whatever the
/// system's default, so IPv4 and IPv6 peers reach it alike.
pub(super) fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    // As the standard library does: a restarted node may take its port back at once.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Bounds the bytes `stream` holds unsent in the kernel (`TCP_NOTSENT_LOWAT`): a write
/// blocks while more than `bytes` wait to go out, so what a node queues for a slow peer is
/// this much, not a whole socket buffer.
pub(super) fn limit_unsent(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return set_int(stream, libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, bytes);
    // Elsewhere the kernel's own buffering stands.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (stream, bytes);
        Ok(())
    }
}

/// Makes a blocking read of `stream` wait until `bytes` have arrived (`SO_RCVLOWAT`), or
/// its timeout passes, or the connection ends, instead of returning at the first segment.
///
/// A read must never ask to wait for bytes the peer is not bound to send: callers set
/// this no higher than what remains of a payload already begun, and back to 1 after.
pub(super) fn wake_after(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return set_int(stream, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes.max(1));
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (stream, bytes);
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_int(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: usize,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    let len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).map_err(io::Error::other)?;
    // SAFETY: the descriptor is a live socket owned by `stream` for the whole call, and
    // the option value points at a `c_int` of the length given, as both options read; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_read_waits_for_the_bytes_asked_then_wakes_for_any() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut rx, _) = listener.accept().unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        wake_after(&rx, 3000).unwrap();
        let sender = std::thread::spawn(move || {
            for _ in 0..3 {
                tx.write_all(&[7; 1000]).unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
            tx
        });
        let mut buf = [0u8; 3000];
        let n = rx.read(&mut buf).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(n, 3000, "one wakeup for the three writes");
        }
        let mut tx = sender.join().unwrap();
        wake_after(&rx, 1).unwrap();
        tx.write_all(&[1; 10]).unwrap();
        assert_eq!(
            rx.read(&mut buf).unwrap(),
            10,
            "back to waking for any byte"
        );
        limit_unsent(&tx, 64 * 1024).unwrap();
    }
}
