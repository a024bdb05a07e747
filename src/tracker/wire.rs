//! The tracker's side of the datagram format, read and written without allocating.
//!
//! A request is decoded borrowing its names from the datagram ([`RequestView`]), and a
//! reply is encoded into the serving thread's own buffer ([`ReplyBuf`]), sealed where it
//! lies when the network has a key; an owner list is written straight from the table
//! ([`OwnersReply`], [`ReplyBuf::write_owners`]), copying each owner's bytes as the table
//! keeps them encoded per node ([`NodeWire`]). On the wire these are byte for byte
//! [`TrackerRequest`](crate::messages::TrackerRequest) and
//! [`TrackerReply`](crate::messages::TrackerReply) (the tests below hold them to it), so
//! nodes see no difference; what changes is that a look-up or an announce costs the
//! tracker no allocation at all.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::burst::Ready;
use crate::error::{Error, Result};
use crate::key::{DatagramSeal, Direction, SEAL_HEAD, SEAL_OVERHEAD, unix_millis};
use crate::messages::{
    Announce, ContentId, Counters, MAX_DATAGRAM_LEN, MAX_NODE_NAME_LEN, OwnerInfo,
    PROTOCOL_VERSION, Token,
};

/// A request as it lies in the datagram: [`TrackerRequest`](crate::messages::TrackerRequest)
/// with borrowed names.
#[derive(Debug, Deserialize)]
pub(crate) struct RequestView<'a> {
    pub version: u16,
    pub txid: u64,
    pub token: Token,
    #[serde(borrow)]
    pub body: BodyView<'a>,
}

/// [`NodeToTracker`](crate::messages::NodeToTracker) with borrowed names; the variants in
/// the same order.
#[derive(Debug, Deserialize)]
pub(crate) enum BodyView<'a> {
    Have(#[serde(borrow)] AnnounceView<'a>),
    Need {
        file: &'a str,
        numwant: u16,
        content: Option<ContentId>,
    },
    Search {
        pattern: &'a str,
    },
    Exit {
        port: u16,
    },
    Connect,
}

/// [`Announce`] with borrowed names.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct AnnounceView<'a> {
    pub node: &'a str,
    pub port: u16,
    pub file: &'a str,
    pub content: ContentId,
    pub size: u64,
    pub pieces: u32,
    pub complete: bool,
    pub counters: Counters,
}

impl<'a> From<&'a Announce> for AnnounceView<'a> {
    fn from(a: &'a Announce) -> Self {
        Self {
            node: &a.node,
            port: a.port,
            file: &a.file,
            content: a.content,
            size: a.size,
            pieces: a.pieces,
            complete: a.complete,
            counters: a.counters,
        }
    }
}

/// Decodes a request, borrowing its names from `bytes`; refuses anything over
/// [`MAX_DATAGRAM_LEN`].
///
/// # Errors
///
/// [`Error::FrameTooLarge`] or [`Error::Decode`].
pub(crate) fn decode_request(bytes: &[u8]) -> Result<RequestView<'_>> {
    if bytes.len() > MAX_DATAGRAM_LEN {
        return Err(Error::FrameTooLarge {
            len: bytes.len() as u64,
            max: MAX_DATAGRAM_LEN as u64,
        });
    }
    Ok(postcard::from_bytes(bytes)?)
}

/// One serving thread's reply buffer: a reply is written into it after room for a seal's
/// head, and sealed there if the network has a key.
pub(crate) struct ReplyBuf {
    buf: Vec<u8>,
    /// The datagram ready to send, as where it starts and ends in `buf`, and where to.
    ready: Option<(usize, usize, SocketAddr)>,
}

impl ReplyBuf {
    /// A buffer for the largest reply, sealed.
    pub fn new() -> Self {
        Self {
            buf: vec![0; MAX_DATAGRAM_LEN + SEAL_OVERHEAD],
            ready: None,
        }
    }

    /// Writes `reply` after room for a seal's head; returns its length, for
    /// [`ready`](Self::ready).
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] if the reply would not fit in one datagram.
    pub fn write(&mut self, reply: &impl Serialize) -> Result<usize> {
        let room = &mut self.buf[SEAL_HEAD..SEAL_HEAD + MAX_DATAGRAM_LEN];
        Ok(postcard::to_slice(reply, room).map_err(too_large)?.len())
    }

    /// Writes a look-up's answer after room for a seal's head, copying each owner's bytes
    /// as its node's announce left them; returns its length, for [`ready`](Self::ready).
    /// The bytes are those `write` makes of the `TrackerReply` it stands for: postcard lays
    /// a struct's fields and a sequence's items end to end, so the head, the owners and
    /// the tail are written one after another.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] if the reply would not fit in one datagram.
    pub fn write_owners<'a, I>(&mut self, reply: &OwnersReply<'a, I>) -> Result<usize>
    where
        I: Iterator<Item = OwnerBytes<'a>> + ExactSizeIterator + Clone,
    {
        let room = &mut self.buf[SEAL_HEAD..SEAL_HEAD + MAX_DATAGRAM_LEN];
        let head = (
            PROTOCOL_VERSION,
            reply.txid,
            OWNERS_VARIANT,
            reply.file,
            reply.content,
            reply.size,
            reply.owners.len(),
        );
        let mut len = postcard::to_slice(&head, room).map_err(too_large)?.len();
        for (node, complete) in reply.owners.clone() {
            let n = node.as_bytes().len();
            let end = len + n + 1;
            if n <= NodeWire::SHORT && len + NodeWire::SHORT <= room.len() {
                // A short node is copied as a fixed-size block (no call, no loop); the
                // bytes past its end are overwritten by what follows.
                room[len..len + NodeWire::SHORT].copy_from_slice(node.short());
            } else {
                room.get_mut(len..len + n)
                    .ok_or_else(|| too_large(postcard::Error::SerializeBufferFull))?
                    .copy_from_slice(node.as_bytes());
            }
            *room
                .get_mut(end - 1)
                .ok_or_else(|| too_large(postcard::Error::SerializeBufferFull))? =
                u8::from(complete);
            len = end;
        }
        let tail = (reply.interval_secs, reply.contents);
        len += postcard::to_slice(&tail, &mut room[len..])
            .map_err(too_large)?
            .len();
        Ok(len)
    }

    /// The reply last written (`len` bytes long), sealed under `seal` if given: the
    /// datagram to send. A look-up writes its reply under the table's lock and seals it
    /// after letting go.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if sealing finds no random salt.
    #[cfg(test)]
    pub fn datagram(&mut self, len: usize, seal: Option<&DatagramSeal>) -> Result<&[u8]> {
        let (start, end) = self.finish(len, seal)?;
        Ok(&self.buf[start..end])
    }

    /// Makes the reply last written (`len` bytes long) ready to send to `to`, sealed under
    /// `seal` if given; [`take_ready`](Self::take_ready) hands it over.
    ///
    /// # Errors
    ///
    /// [`Error::Random`] if sealing finds no random salt; nothing is then ready.
    pub fn ready(&mut self, len: usize, seal: Option<&DatagramSeal>, to: SocketAddr) -> Result<()> {
        self.ready = None;
        let (start, end) = self.finish(len, seal)?;
        self.ready = Some((start, end, to));
        Ok(())
    }

    /// The datagram made ready, and where it goes; none after this until the next.
    pub fn take_ready(&mut self) -> Option<Ready<'_>> {
        let (start, end, to) = self.ready.take()?;
        Some((&self.buf[start..end], to))
    }

    /// Seals the reply last written if there is a key; returns where the datagram lies.
    fn finish(&mut self, len: usize, seal: Option<&DatagramSeal>) -> Result<(usize, usize)> {
        Ok(match seal {
            Some(seal) => {
                let sealed =
                    seal.seal_in_place(Direction::Reply, &mut self.buf, len, unix_millis())?;
                (0, sealed)
            }
            None => (SEAL_HEAD, SEAL_HEAD + len),
        })
    }

    /// Writes `reply` and returns the datagram: [`write`](Self::write), then
    /// [`datagram`](Self::datagram).
    ///
    /// # Errors
    ///
    /// As those two.
    #[cfg(test)]
    pub fn encode(&mut self, reply: &impl Serialize, seal: Option<&DatagramSeal>) -> Result<&[u8]> {
        let len = self.write(reply)?;
        self.datagram(len, seal)
    }
}

/// One owner as [`OwnerInfo`] encodes it, its name borrowed from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct OwnerRef<'a> {
    pub node: &'a str,
    pub addr: SocketAddr,
    pub uploads: u64,
    pub complete: bool,
}

impl From<OwnerRef<'_>> for OwnerInfo {
    fn from(o: OwnerRef<'_>) -> Self {
        Self {
            node: o.node.to_owned(),
            addr: o.addr,
            uploads: o.uploads,
            complete: o.complete,
        }
    }
}

/// A [`TrackerReply`](crate::messages::TrackerReply) carrying [`TrackerToNode::Owners`](crate::messages::TrackerToNode),
/// written from the table by [`ReplyBuf::write_owners`]: `owners` is walked once.
pub(crate) struct OwnersReply<'a, I> {
    pub txid: u64,
    pub file: &'a str,
    pub content: ContentId,
    pub size: u64,
    pub owners: I,
    pub interval_secs: u32,
    pub contents: u32,
}

/// One owner of a look-up's answer: its node's bytes and whether it holds the whole file.
pub(crate) type OwnerBytes<'a> = (&'a NodeWire, bool);

/// Where `Owners` stands among [`TrackerToNode`](crate::messages::TrackerToNode)'s
/// variants: its index on the wire.
const OWNERS_VARIANT: u32 = 1;

/// What an answer says of a node whatever file lists it: its name, address and uploads,
/// encoded as the first three fields of [`OwnerInfo`]. The table keeps these bytes in
/// each node's entry, re-encoded when an announce changes them, so a look-up copies fifty
/// owners rather than encoding them, each from the entry it reads anyway.
#[derive(Clone)]
pub(crate) struct NodeWire {
    len: u8,
    bytes: [u8; NodeWire::MAX],
}

impl NodeWire {
    /// The longest encoding: a name of [`MAX_NODE_NAME_LEN`] bytes and its length, an
    /// IPv6 address with its tag and port, and the largest count.
    const MAX: usize = 1 + MAX_NODE_NAME_LEN + 20 + 10;
    /// Nodes this short (most: a name of a dozen bytes and an IPv4 address) are copied
    /// as one fixed-size block.
    const SHORT: usize = 32;

    /// Nothing: not a node an answer lists (a fresh entry, before its first announce).
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; Self::MAX],
    };

    /// Encodes a node named `name` (at most [`MAX_NODE_NAME_LEN`] bytes) serving at
    /// `addr` that has sent `uploads` files.
    ///
    /// # Errors
    ///
    /// [`Error::FrameTooLarge`] if the name is longer (the table refuses such names first).
    pub fn encode(name: &str, addr: SocketAddr, uploads: u64) -> Result<Self> {
        let mut wire = Self::EMPTY;
        let len = postcard::to_slice(&(name, addr, uploads), &mut wire.bytes)
            .map_err(too_large)?
            .len();
        // At most `MAX`, below 256.
        wire.len = u8::try_from(len).unwrap_or(u8::MAX);
        Ok(wire)
    }

    /// The node's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Its first [`SHORT`](Self::SHORT) bytes, zeros past its end.
    fn short(&self) -> &[u8; Self::SHORT] {
        self.bytes.first_chunk().unwrap_or(&[0; Self::SHORT])
    }
}

impl std::fmt::Debug for NodeWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeWire({:?})", self.as_bytes())
    }
}

/// What a reply too large for one datagram is refused with.
fn too_large(e: postcard::Error) -> Error {
    match e {
        postcard::Error::SerializeBufferFull => Error::FrameTooLarge {
            len: MAX_DATAGRAM_LEN as u64 + 1,
            max: MAX_DATAGRAM_LEN as u64,
        },
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::NetworkKey;
    use crate::messages::{
        NodeToTracker, TrackerReply, TrackerRequest, TrackerToNode, decode_reply, encode_reply,
        encode_request,
    };

    fn content(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    fn request(body: NodeToTracker) -> Vec<u8> {
        encode_request(&TrackerRequest {
            version: PROTOCOL_VERSION,
            txid: 0x1234_5678_9abc,
            token: [9; 16],
            body,
        })
        .unwrap()
    }

    /// Every request a node sends reads the same through the borrowed view.
    #[test]
    fn every_request_reads_the_same_through_the_view() {
        let ann = Announce {
            node: "név-1".into(),
            port: 4001,
            file: "disk image.iso".into(),
            content: content(3),
            size: 1 << 40,
            pieces: 77,
            complete: true,
            counters: Counters {
                files_sent: 5,
                bytes_sent: 1 << 33,
                ..Counters::default()
            },
        };
        let bytes = request(NodeToTracker::Have(ann.clone()));
        let view = decode_request(&bytes).unwrap();
        assert_eq!(
            (view.version, view.txid, view.token),
            (PROTOCOL_VERSION, 0x1234_5678_9abc, [9; 16])
        );
        let BodyView::Have(a) = view.body else {
            panic!("{view:?}")
        };
        let back = Announce {
            node: a.node.into(),
            file: a.file.into(),
            port: a.port,
            content: a.content,
            size: a.size,
            pieces: a.pieces,
            complete: a.complete,
            counters: a.counters,
        };
        assert_eq!(back, ann);
        for pin in [None, Some(content(7))] {
            let bytes = request(NodeToTracker::Need {
                file: "f.bin".into(),
                numwant: 50,
                content: pin,
            });
            let view = decode_request(&bytes).unwrap();
            assert!(
                matches!(view.body, BodyView::Need { file: "f.bin", numwant: 50, content } if content == pin),
                "{view:?}"
            );
        }
        let bytes = request(NodeToTracker::Search {
            pattern: "ISO".into(),
        });
        let view = decode_request(&bytes).unwrap();
        assert!(matches!(view.body, BodyView::Search { pattern: "ISO" }));
        let bytes = request(NodeToTracker::Exit { port: 9 });
        let view = decode_request(&bytes).unwrap();
        assert!(matches!(view.body, BodyView::Exit { port: 9 }));
        let bytes = request(NodeToTracker::Connect);
        let view = decode_request(&bytes).unwrap();
        assert!(matches!(view.body, BodyView::Connect));
        assert!(decode_request(&vec![0; MAX_DATAGRAM_LEN + 1]).is_err());
        assert!(decode_request(&[4, 0]).is_err(), "cut short");
    }

    fn owners() -> Vec<OwnerInfo> {
        (0..50u16)
            .map(|i| OwnerInfo {
                // Two with the longest name and count: copied byte by byte, not as a block.
                node: if i % 25 == 1 {
                    "n".repeat(MAX_NODE_NAME_LEN)
                } else {
                    format!("node-{i}")
                },
                addr: if i % 2 == 0 {
                    SocketAddr::from(([10, 0, 0, i as u8], 4000 + i))
                } else {
                    SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, i], 4000 + i))
                },
                uploads: if i % 25 == 1 {
                    u64::MAX
                } else {
                    u64::from(i) << 20
                },
                complete: i < 7,
            })
            .collect()
    }

    /// An owner list written from borrowed names is the `TrackerReply` a node decodes, to
    /// the byte, plain and sealed.
    #[test]
    fn an_owner_list_is_written_as_the_owned_reply_is() {
        for listed in [0, 1, 50] {
            let owned = &owners()[..listed];
            let reply = TrackerReply {
                version: PROTOCOL_VERSION,
                txid: u64::MAX - 3,
                body: TrackerToNode::Owners {
                    file: "f.bin".into(),
                    content: content(1),
                    size: 123_456_789,
                    owners: owned.to_vec(),
                    interval_secs: 30,
                    contents: 2,
                },
            };
            let nodes: Vec<NodeWire> = owned
                .iter()
                .map(|o| NodeWire::encode(&o.node, o.addr, o.uploads).unwrap())
                .collect();
            let view = OwnersReply {
                txid: u64::MAX - 3,
                file: "f.bin",
                content: content(1),
                size: 123_456_789,
                owners: nodes
                    .iter()
                    .zip(owned)
                    .map(|(bytes, o)| (bytes, o.complete)),
                interval_secs: 30,
                contents: 2,
            };
            let mut buf = ReplyBuf::new();
            let len = buf.write_owners(&view).unwrap();
            assert_eq!(
                buf.datagram(len, None).unwrap(),
                encode_reply(&reply).unwrap()
            );
            let key = NetworkKey::from_bytes([5; 32]);
            let seal = DatagramSeal::new(&key);
            let len = buf.write_owners(&view).unwrap();
            let mut sealed = buf.datagram(len, Some(&seal)).unwrap().to_vec();
            let (_, plain) = seal.open(Direction::Reply, &mut sealed).unwrap();
            assert_eq!(decode_reply(plain).unwrap(), reply);
        }
    }

    /// An owned reply too large for a datagram is refused, not cut.
    /// An owner list that just fits a datagram is written whole, to the byte, and one a
    /// byte longer is refused, never cut.
    #[test]
    fn an_owner_list_at_the_datagram_limit_is_written_whole_or_refused() {
        // Long owners (copied byte by byte), then short ones (copied as a block) last, so
        // the block's guard meets the end of the room; the file name's length sweeps the
        // reply's length across the limit a byte at a time.
        let owners: Vec<OwnerInfo> = (0..874u16)
            .map(|i| OwnerInfo {
                node: if i < 754 {
                    "n".repeat(MAX_NODE_NAME_LEN)
                } else {
                    format!("s{i}")
                },
                addr: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4000)),
                uploads: u64::MAX,
                complete: i % 2 == 0,
            })
            .collect();
        let nodes: Vec<NodeWire> = owners
            .iter()
            .map(|o| NodeWire::encode(&o.node, o.addr, o.uploads).unwrap())
            .collect();
        let (mut fitted, mut refused) = (0, 0);
        let mut buf = ReplyBuf::new();
        for name_len in 1..=crate::messages::MAX_NAME_LEN {
            let file = "f".repeat(name_len);
            let reply = TrackerReply {
                version: PROTOCOL_VERSION,
                txid: 7,
                body: TrackerToNode::Owners {
                    file: file.clone(),
                    content: content(3),
                    size: 1 << 40,
                    owners: owners.clone(),
                    interval_secs: 30,
                    contents: 1,
                },
            };
            let view = OwnersReply {
                txid: 7,
                file: &file,
                content: content(3),
                size: 1 << 40,
                owners: nodes.iter().zip(&owners).map(|(n, o)| (n, o.complete)),
                interval_secs: 30,
                contents: 1,
            };
            let owned = encode_reply(&reply)
                .ok()
                .filter(|b| b.len() <= MAX_DATAGRAM_LEN);
            match (buf.write_owners(&view), owned) {
                (Ok(len), Some(owned)) => {
                    assert_eq!(buf.datagram(len, None).unwrap(), owned, "{name_len}");
                    fitted += 1;
                }
                (Err(Error::FrameTooLarge { .. }), None) => refused += 1,
                (got, owned) => panic!(
                    "name of {name_len}: wrote {:?}, the owned reply is {:?} bytes",
                    got.map_err(|e| e.to_string()),
                    owned.map(|o| o.len())
                ),
            }
        }
        assert!(
            fitted > 10 && refused > 10,
            "{fitted} fitted, {refused} refused"
        );
    }

    #[test]
    fn a_reply_too_large_for_a_datagram_is_refused() {
        let reply = TrackerReply {
            version: PROTOCOL_VERSION,
            txid: 1,
            body: TrackerToNode::Reject {
                reason: "x".repeat(MAX_DATAGRAM_LEN),
            },
        };
        let mut buf = ReplyBuf::new();
        assert!(matches!(
            buf.encode(&reply, None),
            Err(Error::FrameTooLarge { .. })
        ));
        let small = TrackerReply {
            version: PROTOCOL_VERSION,
            txid: 1,
            body: TrackerToNode::BadToken,
        };
        assert_eq!(
            buf.encode(&small, None).unwrap(),
            encode_reply(&small).unwrap()
        );
    }
}
