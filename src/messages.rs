//! The wire format: every message a tracker or node sends, and the one place bytes become
//! messages.
//!
//! The original's four message types map onto these:
//!
//! - **NodeToTracker** ([`NodeToTracker`]): `Have` (I own this file), `Need` (who owns
//!   it?), `Search` and `Exit`, sent to the tracker over UDP inside a [`TrackerRequest`].
//! - **TrackerToNode** ([`TrackerToNode`]): the owner list, search hits, an acknowledgement
//!   or a refusal, inside a [`TrackerReply`] that echoes the request's transaction id.
//! - **SizeInformation** ([`Message::SizeRequest`] / [`Message::SizeInfo`]): where the
//!   original sent `size = -1` to ask, a node sends a `SizeRequest` and the owner answers
//!   with the size, the piece size, the BLAKE3 hash of every piece and the content id, or
//!   with [`Message::Refused`].
//! - **FileCommunication** ([`Message::Request`] / [`Message::Data`]): a request for a
//!   byte range of one piece, answered by a `Data` header followed by the raw bytes.
//!
//! Peer traffic runs over TCP as frames: a 4-byte big-endian length, then the postcard
//! body. File data never passes through serde: a [`Message::Data`] frame is followed on the
//! stream by exactly `len` raw bytes. Tracker traffic is one postcard datagram each way.
//! Every length a peer states is checked against a hard limit before anything is
//! allocated for it.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::split::{MAX_PIECE_SIZE, MAX_PIECES};

/// Version of the tracker and peer protocols; both sides must agree.
pub const PROTOCOL_VERSION: u16 = 4;
/// First bytes of every peer handshake.
pub const MAGIC: [u8; 4] = *b"P2PT";
/// Largest frame of all: a [`Message::SizeInfo`] carrying the piece hashes of the largest
/// file [`crate::split::Geometry`] allows (32 bytes a piece), with room for the rest. Only
/// that answer may be this large; see [`MAX_CONTROL_LEN`].
pub const MAX_FRAME_LEN: u32 = MAX_PIECES * 32 + MAX_CONTROL_LEN;
/// Largest frame other than a size answer with hashes: a full [`Message::Bitfield`] is
/// 16 KiB, and a [`Message::Have`] is sent in lists of at most [`MAX_HAVE_LIST`] pieces. A
/// node reads no larger frame from a peer unless it asked for the piece hashes, so what
/// strangers can make it buffer is this much per connection.
pub const MAX_CONTROL_LEN: u32 = 64 * 1024;
/// Most pieces named in one `Have` or `Withdraw`: at most 5 bytes each, well within
/// [`MAX_CONTROL_LEN`].
pub const MAX_HAVE_LIST: usize = 8_192;
/// Largest raw payload after a [`Message::Data`] header: one whole piece.
pub const MAX_DATA_LEN: u32 = MAX_PIECE_SIZE;
/// Largest tracker datagram, in either direction.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// Longest file name, in bytes: 255 (the usual file system limit) less the longest suffix a
/// download's temporary files add (`.part.state.tmp`), so every name that can be shared can
/// be downloaded and resumed.
pub const MAX_NAME_LEN: usize = 240;
/// Longest node name, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

pub use crate::values::{ContentId, Counters, OwnerInfo, SearchHit};

/// A node's claim to own (part of) a file: the original's `have`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The node's name, for people reading the table.
    pub node: String,
    /// The TCP port the node serves on; the tracker pairs it with the datagram's source IP.
    pub port: u16,
    /// The file's plain name.
    pub file: String,
    /// The file's content id.
    pub content: ContentId,
    /// The file's size in bytes.
    pub size: u64,
    /// How many pieces the node holds verified.
    pub pieces: u32,
    /// Whether the node holds every piece.
    pub complete: bool,
    /// The node's counters.
    pub counters: Counters,
}

/// A request from a node to the tracker: the original's NodeToTracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeToTracker {
    /// Adds or refreshes the sender as an owner of a file (mode `have`).
    Have(Announce),
    /// Asks for the owners of a file (mode `need`).
    Need {
        /// The file's plain name.
        file: String,
        /// How many owners the node wants at most.
        numwant: u16,
        /// Only this content: set when the downloader pinned one, or already holds part
        /// of one. Without it the tracker chooses (see [`TrackerToNode::Owners`]).
        content: Option<ContentId>,
    },
    /// Asks which files match a pattern, and who owns them.
    Search {
        /// A case-insensitive substring of the file names wanted; empty lists everything.
        pattern: String,
    },
    /// Removes the sender from every file it owns (mode `exit`).
    Exit {
        /// The TCP port the node served on.
        port: u16,
    },
    /// Asks for an address token: the one request that needs none.
    Connect,
}

/// A short-lived proof that the sender receives datagrams at its source address, as
/// BitTorrent's UDP trackers use a connection id. Every request but
/// [`NodeToTracker::Connect`] carries one; a sender that forges its source address never
/// sees the token, so it cannot change the table, and is answered only with a reply no
/// larger than its request.
pub type Token = [u8; 16];

/// A tracker's answer: the original's TrackerToNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerToNode {
    /// Acknowledges `Have` or `Exit`, and says how often to re-announce.
    Ack {
        /// Seconds between re-announces.
        interval_secs: u32,
    },
    /// The owners of a file, best first, capped at the request's `numwant`.
    Owners {
        /// The file's plain name.
        file: String,
        /// The content id most owners announce under this name.
        content: ContentId,
        /// The file's size.
        size: u64,
        /// The owners, best first.
        owners: Vec<OwnerInfo>,
        /// Seconds between re-announces.
        interval_secs: u32,
        /// How many different contents are shared under this name. With several and no
        /// pin, the tracker chose the one whose complete owners are on the most distinct
        /// addresses: one host announcing from many ports counts once.
        contents: u32,
    },
    /// No node owns the file asked for with `Need`.
    NotFound {
        /// The file asked for.
        file: String,
    },
    /// Files that matched a search, by name.
    SearchResults {
        /// The hits, capped.
        hits: Vec<SearchHit>,
    },
    /// The request was refused.
    Reject {
        /// Why.
        reason: String,
    },
    /// Answers `Connect`: the token for the sender's address.
    Token {
        /// The token, valid for one to two minutes.
        token: Token,
    },
    /// The request's token is missing, expired or for another address: ask again with
    /// `Connect`.
    BadToken,
    /// A sealed request's send time is further than the replay window from the tracker's
    /// clock: the node's clock is off (or the request is an old one, replayed). Sealed.
    ClockSkew {
        /// How far the request's time is ahead of the tracker's clock, in milliseconds
        /// (negative: behind).
        ahead_ms: i64,
    },
    /// The request was not sealed under the tracker's network key: it was plain and the
    /// tracker has a key, or sealed and the tracker has none or another one. Always sent
    /// plain, and smaller than any request.
    KeyRefused {
        /// Whether the tracker has a network key.
        has_key: bool,
    },
    /// The sender's address has made more requests of this kind than the tracker serves
    /// per second: try again after `retry_ms`. Sent at most once a second per address;
    /// other requests over the rate get no answer.
    Busy {
        /// How long to wait before asking again, in milliseconds.
        retry_ms: u32,
    },
}

/// A datagram from a node to the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerRequest {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u16,
    /// A random id the reply echoes, so stale or stray replies are ignored.
    pub txid: u64,
    /// The sender's address token; zeros for `Connect`.
    pub token: Token,
    /// The request itself.
    pub body: NodeToTracker,
}

/// A datagram from the tracker to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerReply {
    /// The tracker's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The transaction id of the request answered.
    pub txid: u64,
    /// The answer.
    pub body: TrackerToNode,
}

/// The size and piece list of a file: the original's SizeInformation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeInformation {
    /// The file's plain name.
    pub file: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The size of every piece but the last.
    pub piece_size: u32,
    /// The BLAKE3 hash of every piece, or empty if the request asked without hashes.
    pub hashes: Vec<[u8; 32]>,
    /// The content id, which commits to the size, piece size and hashes.
    pub content: ContentId,
}

/// A frame between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Opens a connection in each direction.
    Hello {
        /// Must equal [`MAGIC`].
        magic: [u8; 4],
        /// Must equal [`PROTOCOL_VERSION`].
        version: u16,
        /// The sender's node name.
        node: String,
        /// The port the sender serves peers on (0 if it serves none): a downloader that
        /// connects says where it can be fetched from too, so the node it fetches from,
        /// if downloading the same file, can fetch from it without waiting for the
        /// tracker to list it.
        port: u16,
    },
    /// Asks for a file's [`SizeInformation`] (the original's `size = -1`).
    SizeRequest {
        /// The file's plain name.
        file: String,
        /// Whether to include the piece hashes (the first owner asked sends them; the
        /// others only confirm the content id).
        hashes: bool,
    },
    /// Answers a `SizeRequest`; a [`Message::Bitfield`] follows.
    SizeInfo(SizeInformation),
    /// Which pieces of a file the sender holds: bit `i` of byte `i / 8`, most significant
    /// bit first.
    Bitfield {
        /// The file's content id.
        content: ContentId,
        /// The bits, `ceil(pieces / 8)` bytes.
        bits: Vec<u8>,
    },
    /// A `SizeRequest` was refused.
    Refused {
        /// The file asked for.
        file: String,
        /// Why.
        reason: String,
    },
    /// Asks for `len` bytes at `offset` within piece `piece` (FileCommunication).
    Request {
        /// The file's content id.
        content: ContentId,
        /// The piece index.
        piece: u32,
        /// The offset within the piece.
        offset: u32,
        /// How many bytes.
        len: u32,
    },
    /// Answers a `Request`; exactly `len` raw bytes follow the frame on the stream.
    Data {
        /// The file's content id.
        content: ContentId,
        /// The piece index.
        piece: u32,
        /// The offset within the piece.
        offset: u32,
        /// How many raw bytes follow, at most [`MAX_DATA_LEN`].
        len: u32,
    },
    /// A request was refused; the sender closes the connection after it.
    Reject {
        /// Why.
        reason: String,
    },
    /// The connection was refused because the two nodes' network keys differ: one has a
    /// key and the other none, or they hold different keys. Always sent plain; the sender
    /// closes the connection after it.
    KeyRefused {
        /// Whether the sender has a network key.
        has_key: bool,
    },
    /// The sender now holds these pieces too. An owner sends it unasked (pieces it verified
    /// since, or, for a file it holds complete, pieces it now offers); a downloader sends it
    /// to its owners as it verifies pieces.
    Have {
        /// The file's content id.
        content: ContentId,
        /// The pieces.
        pieces: Vec<u32>,
    },
    /// The owner will answer new requests on this connection (its upload turn began).
    Unchoke,
    /// The owner asks for no new requests on this connection until the next `Unchoke`;
    /// requests already sent are still answered, except for pieces it then withdraws.
    Choke,
    /// An owner that holds the file complete takes back pieces it offered (with `Have`)
    /// and has not sent, when the connection's upload turn ends, so they can go to peers
    /// whose turn it is. Requests for them not yet answered are dropped; the downloader
    /// asks for them again elsewhere, or here once they are offered again.
    Withdraw {
        /// The file's content id.
        content: ContentId,
        /// The pieces no longer offered.
        pieces: Vec<u32>,
    },
}

/// What a download records beside its `.part` file: which pieces are verified and on disk.
///
/// It is stored as its postcard encoding followed by the BLAKE3 hash of that encoding, so a
/// torn or altered record is recognised and ignored ([`decode_record`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// Must equal [`RECORD_MAGIC`].
    pub magic: [u8; 4],
    /// The content id of the file being downloaded.
    pub content: ContentId,
    /// How many pieces the file has.
    pub pieces: u32,
    /// Which are verified and synced to disk, as in [`Message::Bitfield`]. A hint: on
    /// resume every piece is verified again.
    pub bits: Vec<u8>,
    /// The device of the `.part` this record belongs to.
    pub dev: u64,
    /// The inode of that `.part`: a download adopts an existing `.part` only if its record
    /// names that very file.
    pub ino: u64,
}

/// First bytes of a [`ResumeRecord`].
pub const RECORD_MAGIC: [u8; 4] = *b"P2PR";

/// Encodes a resume record with its checksum.
///
/// # Errors
///
/// [`Error::Decode`] if encoding fails (it cannot for well-formed values).
pub fn encode_record(record: &ResumeRecord) -> Result<Vec<u8>> {
    let mut bytes = postcard::to_stdvec(record)?;
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    Ok(bytes)
}

/// Decodes a resume record, or returns `None` if it is torn, altered or not a record.
pub fn decode_record(bytes: &[u8]) -> Option<ResumeRecord> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let record: ResumeRecord = postcard::from_bytes(body).ok()?;
    (record.magic == RECORD_MAGIC).then_some(record)
}

/// Checks that `name` is a plain file name, safe to join to a node's folder.
///
/// A plain name is 1 to [`MAX_NAME_LEN`] bytes with no `/`, `\`, NUL, control character
/// or bidirectional formatting character (which can make `evil\u{202e}txt.exe` read as
/// `evilexe.txt`), and is not `.` or `..`. Absolute paths and traversal fail the separator
/// rule.
///
/// # Errors
///
/// [`Error::InvalidName`] naming the offending name.
pub fn check_file_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control() || is_bidi_control(c));
    if bad {
        return Err(Error::InvalidName { name: shown(name) });
    }
    Ok(())
}

/// A name as an error may show it: control and direction characters escaped (so it cannot
/// rewrite a terminal or reorder the line), and past 64 characters cut, with its length.
pub(crate) fn shown(name: &str) -> String {
    const KEEP: usize = 64;
    let escaped: String = name
        .chars()
        .take(KEEP)
        .flat_map(|c| {
            let plain = !(c.is_control() || is_bidi_control(c));
            let one = plain.then_some(c).into_iter();
            let esc = (!plain).then(|| c.escape_unicode()).into_iter().flatten();
            one.chain(esc)
        })
        .collect();
    if name.chars().nth(KEEP).is_some() {
        format!("{escaped}… ({} bytes)", name.len())
    } else {
        escaped
    }
}

/// Returns whether `c` changes the direction text is shown in (U+200E, U+200F, U+202A to
/// U+202E, U+2066 to U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes one frame: a 4-byte big-endian length, then the postcard body.
///
/// For a [`Message::Data`] frame the caller writes the `len` payload bytes next.
///
/// # Errors
///
/// [`Error::FrameIo`] if writing fails, [`Error::FrameTooLarge`] if the body would exceed
/// [`MAX_FRAME_LEN`].
pub fn write_frame(w: &mut impl Write, msg: &Message) -> Result<()> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN as usize {
        return Err(Error::FrameTooLarge {
            len: len as u64,
            max: u64::from(MAX_FRAME_LEN),
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    w.write_all(&buf).map_err(Error::FrameIo)
}

/// Reads one frame.
///
/// Returns `Ok(None)` if and only if the stream ended cleanly on a frame boundary. A
/// [`Message::Data`] header is checked here: its `len` must not exceed [`MAX_DATA_LEN`];
/// the caller then reads the payload with [`read_payload`].
///
/// # Errors
///
/// [`Error::FrameTooLarge`] before allocating if the length prefix exceeds
/// [`MAX_FRAME_LEN`] (and below it, memory grows only with the bytes that arrive), [`Error::Truncated`] if the stream ends inside a frame,
/// [`Error::Decode`] if the body is not a valid message, [`Error::FrameIo`] otherwise.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Message>> {
    read_frame_within(r, MAX_FRAME_LEN)
}

/// Reads one frame, as [`read_frame`], refusing any longer than `max` before reading its
/// body.
///
/// # Errors
///
/// As [`read_frame`], with [`Error::FrameTooLarge`] past `max`.
pub fn read_frame_within(r: &mut impl Read, max: u32) -> Result<Option<Message>> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::FrameIo(e)),
        }
    }
    read_frame_after_within(prefix, r, max).map(Some)
}

/// Reads the rest of a frame whose 4-byte length prefix was already read.
///
/// # Errors
///
/// As [`read_frame`], and [`Error::Truncated`] if the stream ends before the body.
pub fn read_frame_after(prefix: [u8; 4], r: &mut impl Read) -> Result<Message> {
    read_frame_after_within(prefix, r, MAX_FRAME_LEN)
}

/// Reads the rest of a frame whose 4-byte length prefix was already read, refusing one
/// longer than `max` (and than [`MAX_FRAME_LEN`]).
///
/// # Errors
///
/// As [`read_frame_after`].
pub fn read_frame_after_within(prefix: [u8; 4], r: &mut impl Read, max: u32) -> Result<Message> {
    let len = u32::from_be_bytes(prefix);
    let max = max.min(MAX_FRAME_LEN);
    if len > max {
        return Err(Error::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(max),
        });
    }
    // Grown as bytes arrive, not allocated up front: a peer that announces a large frame
    // and sends nothing costs nothing.
    let mut body = Vec::new();
    r.take(u64::from(len))
        .read_to_end(&mut body)
        .map_err(Error::FrameIo)?;
    if body.len() < len as usize {
        return Err(Error::Truncated);
    }
    let msg: Message = postcard::from_bytes(&body)?;
    if let Message::Data { len, .. } = msg
        && len > MAX_DATA_LEN
    {
        return Err(Error::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(MAX_DATA_LEN),
        });
    }
    Ok(msg)
}

/// Reads the raw payload that follows a [`Message::Data`] header into `buf`, filling it.
///
/// # Errors
///
/// [`Error::Truncated`] if the stream ends first, [`Error::FrameIo`] otherwise.
pub fn read_payload(r: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(eof_is_truncation)
}

/// Encodes a tracker request as one datagram.
///
/// # Errors
///
/// [`Error::Decode`] if encoding fails (it cannot for well-formed values).
pub fn encode_request(req: &TrackerRequest) -> Result<Vec<u8>> {
    Ok(postcard::to_stdvec(req)?)
}

/// Decodes a tracker request, refusing anything over [`MAX_DATAGRAM_LEN`].
///
/// # Errors
///
/// [`Error::FrameTooLarge`] or [`Error::Decode`].
pub fn decode_request(bytes: &[u8]) -> Result<TrackerRequest> {
    check_datagram_len(bytes)?;
    Ok(postcard::from_bytes(bytes)?)
}

/// Encodes a tracker reply as one datagram.
///
/// # Errors
///
/// [`Error::FrameTooLarge`] if the reply would not fit in one datagram.
pub fn encode_reply(reply: &TrackerReply) -> Result<Vec<u8>> {
    let bytes = postcard::to_stdvec(reply)?;
    check_datagram_len(&bytes)?;
    Ok(bytes)
}

/// Decodes a tracker reply, refusing anything over [`MAX_DATAGRAM_LEN`].
///
/// # Errors
///
/// [`Error::FrameTooLarge`] or [`Error::Decode`].
pub fn decode_reply(bytes: &[u8]) -> Result<TrackerReply> {
    check_datagram_len(bytes)?;
    Ok(postcard::from_bytes(bytes)?)
}

fn check_datagram_len(bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_DATAGRAM_LEN {
        return Err(Error::FrameTooLarge {
            len: bytes.len() as u64,
            max: MAX_DATAGRAM_LEN as u64,
        });
    }
    Ok(())
}

fn eof_is_truncation(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::Truncated
    } else {
        Error::FrameIo(e)
    }
}

#[cfg(test)]
mod tests;
